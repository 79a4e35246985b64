// The viridis colormap (van der Walt and Smith, matplotlib's default since 2.0): perceptually
// uniform, readable in grey and by most colour-vision deficiencies. 17 anchors of its published
// 256-entry table (entries 0, 16, ..., 240, 255), linearly interpolated in between: within
// 0.008 of the full table (two 8-bit steps, near the red channel's minimum around entry 150).
#pragma once

#include <algorithm>
#include <array>
#include <cmath>

namespace attnlens::io {

// A colour with channels in [0, 1].
struct RgbColour {
  double red = 0, green = 0, blue = 0;
};

namespace detail {

inline constexpr std::array<double, 17> k_viridis_positions = {
    0.0,         16 / 255.0,  32 / 255.0,  48 / 255.0,  64 / 255.0,  80 / 255.0,
    96 / 255.0,  112 / 255.0, 128 / 255.0, 144 / 255.0, 160 / 255.0, 176 / 255.0,
    192 / 255.0, 208 / 255.0, 224 / 255.0, 240 / 255.0, 1.0};

inline constexpr std::array<RgbColour, 17> k_viridis_anchors = {{{0.267004, 0.004874, 0.329415},
                                                                 {0.282327, 0.094955, 0.417331},
                                                                 {0.278826, 0.175490, 0.483397},
                                                                 {0.258965, 0.251537, 0.524736},
                                                                 {0.229739, 0.322361, 0.545706},
                                                                 {0.199430, 0.387607, 0.554642},
                                                                 {0.172719, 0.448791, 0.557885},
                                                                 {0.149039, 0.508051, 0.557250},
                                                                 {0.127568, 0.566949, 0.550556},
                                                                 {0.120638, 0.625828, 0.533488},
                                                                 {0.157851, 0.683765, 0.501686},
                                                                 {0.246070, 0.738910, 0.452024},
                                                                 {0.369214, 0.788888, 0.382914},
                                                                 {0.515992, 0.831158, 0.294279},
                                                                 {0.678489, 0.863742, 0.189503},
                                                                 {0.845561, 0.887322, 0.099702},
                                                                 {0.993248, 0.906157, 0.143936}}};

}  // namespace detail

// viridis at t in [0, 1] (clamped; NaN gives the colour of 0).
inline RgbColour viridis(double t) {
  const double x = std::isnan(t) ? 0.0 : std::clamp(t, 0.0, 1.0);
  const auto& at = detail::k_viridis_positions;
  // The first anchor above x (at[0] = 0 <= x), the last one for x = 1.
  const auto upper =
      static_cast<std::size_t>(std::upper_bound(at.begin(), at.end() - 1, x) - at.begin());
  const double s = (x - at[upper - 1]) / (at[upper] - at[upper - 1]);
  const RgbColour& a = detail::k_viridis_anchors[upper - 1];
  const RgbColour& b = detail::k_viridis_anchors[upper];
  return {a.red + s * (b.red - a.red), a.green + s * (b.green - a.green),
          a.blue + s * (b.blue - a.blue)};
}

}  // namespace attnlens::io
