// The whole VisionTransformer trained as a classifier against torch.autograd (tests/reference/
// oracles/gradients.py, grad_vit): forward with a cache, the mean softmax cross-entropy of the
// logits and integer labels, backward; the loss, the logits, dL/dimages and every parameter's
// gradient under timm's names, for softmax and every attention variant, learned absolute and
// 2-D relative positions, CLS and mean pooling, pre- and post-norm blocks and the fidelity
// residual. Tolerance: float 1e-4 relative, 1e-5 absolute below magnitude 0.1; double 1e-9,
// 1e-10 (support/gradient_fixtures.hpp).
#include <gtest/gtest.h>

#include <iostream>
#include <string>

#include "attnlens/blocks/vision_transformer.hpp"
#include "attnlens/train/cross_entropy.hpp"
#include "support/blocks.hpp"
#include "support/gradient_fixtures.hpp"

namespace attnlens {
namespace {

template <class T>
void check_vit_training_gradients_against_pytorch() {
  const io::SafeTensors file = testing::load_typed_fixture<T>("grad_vit");
  const int checked = testing::for_each_case(file, "", [&](const auto& c, const auto& prefix) {
    VisionTransformer<T> vit(testing::vit_options(c));
    io::load_parameters(file, prefix, vit);
    VitCache<T> cache;
    const VitOutput<T> out = vit.forward(file.get<T>(prefix + "images"), {}, &cache);
    const CrossEntropy<T> loss =
        testing::expect_training_loss_matches(file, prefix, out.logits, std::cout);
    VisionTransformer<T> gradient = zeros_like(vit);
    const Tensor<T> dimages =
        vit.backward(cache, Tensor<T>::from_matrix(loss.grad_logits), gradient);
    std::cout << ", gradients " << testing::expect_gradients_match(file, prefix, dimages, gradient)
              << "\n";
  });
  EXPECT_EQ(checked, 12);
}

TEST(VisionTransformerBackward, TrainingLossGradientsMatchPyTorchAutogradFloat) {
  check_vit_training_gradients_against_pytorch<float>();
}
TEST(VisionTransformerBackward, TrainingLossGradientsMatchPyTorchAutogradDouble) {
  check_vit_training_gradients_against_pytorch<double>();
}

}  // namespace
}  // namespace attnlens
