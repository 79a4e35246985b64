// A downstream program of attnlens::data: zlib reaches it through the target alone. A batch of
// images goes through gzip IDX and back, then one seeded crop and flip.
#include <attnlens/image/augment.hpp>
#include <attnlens/io/idx.hpp>
#include <cstdio>

int main() {
  attnlens::Tensor<std::uint8_t> bytes({2, 4, 4});
  for (attnlens::Index i = 0; i < bytes.size(); ++i)
    bytes.data()[i] = static_cast<std::uint8_t>(7 * i);
  const std::string file = attnlens::io::encode_idx(bytes, {/*gzip*/ true});
  const auto images =
      attnlens::io::unit_image_batch<float>(attnlens::io::decode_idx_images(file, "in memory"));
  attnlens::PortableRng rng(1);
  attnlens::AugmentOptions options;
  options.crop_padding = 1;
  const auto augmented = attnlens::augment_images(images, options, rng);
  std::printf("attnlens data consumer: %zu gzip bytes, %lld images\n", file.size(),
              static_cast<long long>(augmented.dim(0)));
  return images.shape() == attnlens::Shape{2, 1, 4, 4} && images.at({1, 0, 3, 3}) == 217.0f / 255.0f
             ? 0
             : 1;
}
