// attnlens: self-attention as kernel smoothing, on Eigen. This umbrella header includes the
// core library (everything but the io/ extras, which need further dependencies).
#pragma once

#include "attnlens/version.hpp"

#include "attnlens/core/errors.hpp"
#include "attnlens/core/init.hpp"
#include "attnlens/core/parallel.hpp"
#include "attnlens/core/softmax.hpp"
#include "attnlens/core/tensor.hpp"
#include "attnlens/core/types.hpp"

#include "attnlens/attention/mask.hpp"
#include "attnlens/attention/multi_head.hpp"
#include "attnlens/attention/reference_engine.hpp"
#include "attnlens/attention/score_term.hpp"

#include "attnlens/layers/linear.hpp"
