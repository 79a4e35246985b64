// attnlens: self-attention as kernel smoothing, on Eigen. This umbrella header includes the
// core library (everything but the io/ extras, which need further dependencies), layer by layer.
#pragma once

#include "attnlens/core/checked.hpp"
#include "attnlens/core/errors.hpp"
#include "attnlens/core/gemm.hpp"
#include "attnlens/core/grid2d.hpp"
#include "attnlens/core/init.hpp"
#include "attnlens/core/parallel.hpp"
#include "attnlens/core/softmax.hpp"
#include "attnlens/core/softplus.hpp"
#include "attnlens/core/tensor.hpp"
#include "attnlens/core/types.hpp"

#include "attnlens/layers/activations.hpp"
#include "attnlens/layers/embedding.hpp"
#include "attnlens/layers/feed_forward.hpp"
#include "attnlens/layers/layer_norm.hpp"
#include "attnlens/layers/linear.hpp"
#include "attnlens/layers/patch_embedding.hpp"

#include "attnlens/kernel/fused_engine.hpp"
#include "attnlens/kernel/mask.hpp"
#include "attnlens/kernel/query_key_transform.hpp"
#include "attnlens/kernel/range_kernel.hpp"
#include "attnlens/kernel/reference_engine.hpp"
#include "attnlens/kernel/score_term.hpp"
#include "attnlens/kernel/value_term.hpp"
#include "attnlens/kernel/window.hpp"

#include "attnlens/position/absolute.hpp"
#include "attnlens/position/alibi.hpp"
#include "attnlens/position/distance_kernel.hpp"
#include "attnlens/position/learned.hpp"
#include "attnlens/position/learned_2d.hpp"
#include "attnlens/position/quadratic.hpp"
#include "attnlens/position/relative_grid_term.hpp"
#include "attnlens/position/rope.hpp"
#include "attnlens/position/shaw.hpp"
#include "attnlens/position/sinusoidal.hpp"
#include "attnlens/position/t5.hpp"
#include "attnlens/position/transformer_xl.hpp"

#include "attnlens/attention/elliptical.hpp"
#include "attnlens/attention/kde.hpp"
#include "attnlens/attention/multi_head.hpp"
#include "attnlens/attention/variant.hpp"

#include "attnlens/image/image_filter.hpp"
#include "attnlens/image/image_quality.hpp"

#include "attnlens/blocks/encoder.hpp"
#include "attnlens/blocks/encoder_layer.hpp"
#include "attnlens/blocks/position_encoding.hpp"
#include "attnlens/blocks/residual.hpp"
#include "attnlens/blocks/sequence_classifier.hpp"
#include "attnlens/blocks/vision_transformer.hpp"

#include "attnlens/interpret/attention_maps.hpp"
#include "attnlens/interpret/attention_rollout.hpp"
#include "attnlens/interpret/conv_as_attention.hpp"

#include "attnlens/train/cross_entropy.hpp"

#include "attnlens/version.hpp"
