// The registry of position encodings (position/registry.hpp): every entry's declared
// parameters are exactly what its factor holds, names round-trip, and every setting survives
// config.json.
#include <gtest/gtest.h>

#include <map>
#include <string>

#include "attnlens/io/model.hpp"
#include "attnlens/io/vit_model.hpp"
#include "attnlens/position/registry.hpp"
#include "support/expect_error.hpp"

namespace attnlens {
namespace {

// Every relative or grid entry on a 3 x 4 grid of 12-wide, 3-head layers.
TEST(PositionRegistry, DeclaredParametersAreTheFactorsParameters) {
  int checked = 0;
  for (const PositionEncoding& entry : position_encodings()) {
    if (entry.kind != PositionKind::relative && entry.kind != PositionKind::grid) continue;
    SCOPED_TRACE(entry.type.name());
    PositionOptions o;
    o.type = entry.type;
    o.max_relative_position = 2;
    o.grid = Grid2d{3, 4, 0};
    std::map<std::string, Shape> declared;
    if (entry.parameters)
      for (const auto& p : entry.parameters(o, 12, 3, "test")) declared[p.name] = p.shape;
    std::map<std::string, Shape> held;
    const auto visit = [&](const std::string& name, auto& parameter) {
      held[name] =
          parameter.cols() == 1 && std::is_same_v<std::decay_t<decltype(parameter)>, Vector<float>>
              ? Shape{parameter.rows()}
              : Shape{parameter.rows(), parameter.cols()};
    };
    detail::ParameterCallback<float, decltype(visit)> visitor(visit);
    entry.make<float>(o, 12, 3)->visit_parameters("", visitor);
    EXPECT_EQ(declared, held);
    ++checked;
  }
  EXPECT_GE(checked, 8);
}

TEST(PositionRegistry, NamesRoundTripAndUnknownNamesListTheRegistered) {
  for (PositionType t : k_position_types) EXPECT_EQ(position_type_from_name(t.name()), t);
  EXPECT_TRUE(is_relative(position_type_from_name("cauchy")));
  testing::expect_error_naming<ArgumentError>([] { position_type_from_name("xpos", "where"); },
                                              "\"cauchy\"");
}

// Every setting of every encoding, at a value other than its default, comes back from
// config.json: an encoder's "position" or, for those on a patch grid, a ViT's
// "relative_position".
TEST(PositionRegistry, EverySettingSurvivesConfigJson) {
  for (const PositionEncoding& entry : position_encodings()) {
    SCOPED_TRACE(entry.type.name());
    PositionOptions o;
    o.type = entry.type;
    for (const PositionSetting& setting : entry.settings) {
      SettingValue value = setting.get(o);
      if (auto* i = std::get_if<Index>(&value)) *i += 3;
      if (auto* x = std::get_if<double>(&value)) *x *= 1.5;
      if (auto* b = std::get_if<bool>(&value)) *b = !*b;
      if (auto* s = std::get_if<std::string>(&value)) *s = setting.choices.back();
      setting.set(o, value);
    }
    const auto json = io::detail::position_config_json(o);
    const io::detail::ConfigReader reader(json, "config.json");
    const PositionOptions back = entry.kind == PositionKind::grid
                                     ? io::detail::parse_grid_position_config(reader)
                                     : io::detail::parse_sequence_position_config(reader);
    EXPECT_EQ(io::detail::position_config_json(back), json);
    for (const PositionSetting& setting : entry.settings)
      EXPECT_EQ(setting.get(back), setting.get(o)) << setting.key;
  }
}

}  // namespace
}  // namespace attnlens
