// The attention variants MultiHeadAttention offers (MATH.md section 2), each a choice of kernel
// factors: softmax, bilateral (a distance kernel on positions), KDE and robust KDE (Gaussian
// range kernel on unit keys, Huber key weights), FourierFormer (sinc^4), elliptical (a metric
// on the queries) and NeuTRENO (a fidelity term on the values), with boosting of order k for
// any of them. Defaults are the published ones.
#pragma once

#include <cmath>
#include <string>

#include "attnlens/position/distance_kernel.hpp"
#include "attnlens/kernel/reference_engine.hpp"
#include "attnlens/core/errors.hpp"
#include "attnlens/core/types.hpp"
#include "attnlens/core/grid2d.hpp"

namespace attnlens {

enum class AttentionVariantType {
  softmax,     // exp(q.k / sqrt(d))
  bilateral,   // exp(q.k / sqrt(d)) * distance kernel of the positions, sigma_h = softplus(rho_h)
  kde,         // keys L2-normalized, exp(-|q - k|^2 / sqrt(d))
  robust_kde,  // kde with Huber weights on the keys and on [k; v]
  fourier,     // prod_c sinc(R (q_c - k_c))^4, A = K / (sum K + epsilon)
  elliptical,  // exp((q * m).k / sqrt(d)), m from this and the previous layer's values
  neutreno,    // A V + lambda (V^0 - V), V^0 the first layer's values
};

struct AttentionVariantOptions {
  AttentionVariantType type = AttentionVariantType::softmax;
  // Boosting order k of any variant: z_0 = A V, z_{m+1} = z_m + A (V - z_m); 1 is twicing.
  Index boost = 0;

  // bilateral: the distance kernel's form and positions (1-D or a grid), and the width every
  // head's sigma_h = softplus(rho_h) starts at.
  DistanceKernelOptions domain = {};
  double sigma_init = 4.0;

  double huber_a = 0.2;           // robust_kde: Huber threshold a
  double fourier_epsilon = 1e-6;  // fourier: added to the kernel's row sums
  double elliptical_delta = 5.0;  // elliptical: step delta (cancels in the max-scaling)
  double neutreno_lambda = 0.6;   // neutreno: 0.6 (vision), 0.4 (language)
};

// Whether the variant reads other layers' values (StackValues).
inline bool uses_stack_values(AttentionVariantType type) {
  return type == AttentionVariantType::neutreno || type == AttentionVariantType::elliptical;
}

// Whether the variant has a content (query-key) range kernel that cannot be turned off.
inline bool needs_content(AttentionVariantType type) {
  return type == AttentionVariantType::kde || type == AttentionVariantType::robust_kde ||
         type == AttentionVariantType::fourier || type == AttentionVariantType::elliptical;
}

inline const char* attention_variant_name(AttentionVariantType type) {
  switch (type) {
    case AttentionVariantType::softmax:
      return "softmax";
    case AttentionVariantType::bilateral:
      return "bilateral";
    case AttentionVariantType::kde:
      return "kde";
    case AttentionVariantType::robust_kde:
      return "robust_kde";
    case AttentionVariantType::fourier:
      return "fourier";
    case AttentionVariantType::elliptical:
      return "elliptical";
    case AttentionVariantType::neutreno:
      return "neutreno";
  }
  return "unknown";
}

// The type named `name` (as attention_variant_name writes it); throws ArgumentError naming
// `what` otherwise.
inline AttentionVariantType attention_variant_from_name(
    const std::string& name, const std::string& what = "attention type") {
  for (auto type :
       {AttentionVariantType::softmax, AttentionVariantType::bilateral, AttentionVariantType::kde,
        AttentionVariantType::robust_kde, AttentionVariantType::fourier,
        AttentionVariantType::elliptical, AttentionVariantType::neutreno})
    if (name == attention_variant_name(type)) return type;
  throw ArgumentError(what +
                      ": expected one of softmax, bilateral, kde, robust_kde, fourier, "
                      "elliptical, neutreno, got '" +
                      name + "'");
}

inline const char* distance_kernel_name(DistanceKernelType type) {
  return type == DistanceKernelType::gaussian ? "gaussian" : "laplacian";
}

// The type named `name` (as distance_kernel_name writes it); throws ArgumentError naming `what`
// otherwise.
inline DistanceKernelType distance_kernel_from_name(const std::string& name,
                                                    const std::string& what = "domain kernel") {
  for (auto type : {DistanceKernelType::gaussian, DistanceKernelType::laplacian})
    if (name == distance_kernel_name(type)) return type;
  throw ArgumentError(what + ": expected gaussian or laplacian, got '" + name + "'");
}

// Throws ArgumentError naming the first option out of its domain; `what` prefixes the names.
inline void check_variant_options(const AttentionVariantOptions& o,
                                  const std::string& what = "AttentionVariantOptions") {
  detail::require_argument(o.boost >= 0, what + "::boost", ">= 0", o.boost);
  detail::require_argument(o.boost <= k_max_boost, what + "::boost",
                           detail::concat("<= ", k_max_boost, " (k_max_boost)"), o.boost);
  detail::require_argument(o.sigma_init > 0, what + "::sigma_init", "> 0", o.sigma_init);
  detail::require_argument(o.huber_a > 0, what + "::huber_a", "> 0", o.huber_a);
  detail::require_argument(o.fourier_epsilon >= 0, what + "::fourier_epsilon", ">= 0",
                           o.fourier_epsilon);
  detail::require_argument(o.elliptical_delta > 0, what + "::elliptical_delta", "> 0",
                           o.elliptical_delta);
  detail::require_argument(std::isfinite(o.neutreno_lambda), what + "::neutreno_lambda",
                           "a finite number", o.neutreno_lambda);
  detail::require_argument(o.domain.leading >= 0, what + "::domain.leading", ">= 0",
                           o.domain.leading);
  detail::require_argument(!(o.domain.grid && o.domain.leading != 0), what + "::domain.leading",
                           "0 with a grid (use grid->leading)", o.domain.leading);
  if (o.domain.grid) o.domain.grid->check(what + "::domain.grid");
}

}  // namespace attnlens
