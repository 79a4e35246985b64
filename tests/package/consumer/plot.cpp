// A downstream program of attnlens::plot: PLplot reaches it through the target alone. Two
// panels of one series each go to a PNG, which is read back for its size.
#include <attnlens/io/line_plot.hpp>
#include <cstdio>
#include <filesystem>

int main() {
  const std::string path =
      (std::filesystem::temp_directory_path() / "attnlens_consumer_plot.png").string();
  attnlens::io::LinePlot rising, falling;
  rising.series.push_back({"rising", {0, 1, 2}, {0, 1, 4}, {}, {}, {}});
  falling.series.push_back({"falling", {0, 1, 2}, {3, 2, 0}, {0.5, 0.5, 0.5}, {}, {}});
  attnlens::io::write_line_plot_png(path, {rising, falling}, {/*width*/ 400, /*height*/ 200});
  const auto image = attnlens::io::read_png_gray(path);
  std::filesystem::remove(path);
  std::printf("attnlens plot consumer: %ld x %ld pixels\n", static_cast<long>(image.cols()),
              static_cast<long>(image.rows()));
  return image.cols() == 400 && image.rows() == 200 ? 0 : 1;
}
