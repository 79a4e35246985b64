// Pictures for the demo: the 2-D domain kernels of attention heads around one query pixel,
// softmax_j b_h(i, j) over the key pixels, one panel per head (as Cordonnier et al. draw
// them): quadratic heads, generalized (elliptic) quadratic heads, learned row/column offsets,
// and the Gaussian domain kernel of a bilateral filter at several widths.
#pragma once

#include <filesystem>
#include <iostream>
#include <memory>
#include <string>

#include "attnlens/attnlens.hpp"
#include "attnlens/io/png.hpp"
#include "attnlens/position/learned_2d.hpp"
#include "attnlens/position/quadratic.hpp"

namespace attnlens::demo {

// A row of panels, each head's kernel scaled to its maximum, separated by white columns.
inline Matrix<float> kernel_panels(const ScoreTerm<float>& term, const Grid2d& grid, Index heads,
                                   Index query) {
  const Index H = grid.height, W = grid.width, S = grid.tokens();
  term.check({1, heads, S, S});
  Matrix<float> panels = Matrix<float>::Ones(H, heads * (W + 1) - 1);
  const Matrix<float> no_content = Matrix<float>::Zero(S, 1);
  for (Index h = 0; h < heads; ++h) {
    Matrix<float> row = Matrix<float>::Zero(1, S);
    term.add(ScoreTile<float>{{0, h, query, 0}, no_content.middleRows(query, 1), no_content}, row);
    softmax_rows<float>(row);
    row /= row.maxCoeff();
    for (Index t = grid.leading; t < S; ++t) {
      const auto p = grid.position(t);
      panels(p[0], h * (W + 1) + p[1]) = row(0, t);
    }
  }
  return panels;
}

inline void draw_domain_kernels(const std::string& directory) {
  std::cout << "\n4. Domain kernels of 2-D position encodings around the center pixel (PNG)\n";
  std::filesystem::create_directories(directory);
  const Grid2d grid{15, 15};
  const Index query = 7 * 15 + 7;
  const auto save = [&](const std::string& name, const ScoreTerm<float>& term, Index heads) {
    const std::string path = directory + "/" + name + ".png";
    io::write_png_gray(path, kernel_panels(term, grid, heads, query), 8);
    std::cout << "   " << path << " (" << heads << " heads)\n";
  };

  QuadraticEncoding<float> quadratic({9, grid});
  for (Index h = 0; h < 9; ++h) {
    quadratic.alpha[h] = 0.25f + 0.1f * static_cast<float>(h);
    quadratic.center_shift.row(h) << static_cast<float>(2 * (h / 3 - 1)),
        static_cast<float>(3 * (h % 3 - 1));
  }
  save("quadratic", quadratic, 9);

  GeneralizedQuadraticEncoding<float> elliptic({4, grid});
  elliptic.center_shift << 0, 0, 2, -2, -3, 0, 0, 3;
  elliptic.inverse_covariance << 0.1f, 0, 0, 1.0f,  // tall: wide along the rows
      1.0f, 0, 0, 0.1f,                             // wide along the columns
      0.5f, 0.4f, 0.4f, 0.5f,                       // along the anti-diagonal
      0.5f, -0.4f, -0.4f, 0.5f;                     // along the diagonal
  save("quadratic_generalized", elliptic, 4);

  LearnedRelative2d<float> learned({4, 15, 8, grid});
  Rng rng(11);
  learned.reset_parameters(rng);
  learned.head_keys_row *= 4.0f;  // a trained head is sharper than its initialisation
  learned.head_keys_col *= 4.0f;
  save("learned_2d", learned, 4);

  // exp(-|delta|^2 / (2 sigma^2)): the quadratic encoding centered on the query.
  QuadraticEncoding<float> gaussian({4, grid});
  const float sigmas[4] = {1.0f, 1.5f, 2.5f, 4.0f};
  for (Index h = 0; h < 4; ++h) gaussian.alpha[h] = 0.5f / (sigmas[h] * sigmas[h]);
  save("gaussian", gaussian, 4);
}

}  // namespace attnlens::demo
