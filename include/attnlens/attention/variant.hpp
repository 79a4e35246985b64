// The attention variants MultiHeadAttention offers (docs/math.md section 2), each a plan of kernel
// factors (attention/plan.hpp): softmax, bilateral (a distance kernel on positions), KDE and
// robust KDE (Gaussian range kernel on unit keys, Huber key weights), FourierFormer (sinc^4),
// elliptical (a metric on the queries) and NeuTRENO (a fidelity term on the values), with
// boosting of order k for any of them. Defaults are the published ones. This is the one place
// that knows the variants by name: their options, learned parameters and plans.
#pragma once

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "attnlens/attention/elliptical.hpp"
#include "attnlens/attention/kde.hpp"
#include "attnlens/attention/neutreno.hpp"
#include "attnlens/attention/plan.hpp"
#include "attnlens/core/errors.hpp"
#include "attnlens/core/grid2d.hpp"
#include "attnlens/core/names.hpp"
#include "attnlens/core/softplus.hpp"
#include "attnlens/core/types.hpp"
#include "attnlens/kernel/attention_kernel.hpp"
#include "attnlens/kernel/factor.hpp"
#include "attnlens/position/distance_kernel.hpp"

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

inline constexpr Named<AttentionVariantType> k_attention_variant_names[] = {
    {AttentionVariantType::softmax, "softmax"},  {AttentionVariantType::bilateral, "bilateral"},
    {AttentionVariantType::kde, "kde"},          {AttentionVariantType::robust_kde, "robust_kde"},
    {AttentionVariantType::fourier, "fourier"},  {AttentionVariantType::elliptical, "elliptical"},
    {AttentionVariantType::neutreno, "neutreno"}};

inline const char* attention_variant_name(AttentionVariantType type) {
  return name_of(k_attention_variant_names, type);
}

// The type named `name` (as attention_variant_name writes it); throws ArgumentError naming
// `what` otherwise.
inline AttentionVariantType attention_variant_from_name(
    const std::string& name, const std::string& what = "attention type") {
  return value_named(k_attention_variant_names, name, what);
}

inline constexpr Named<DistanceKernelType> k_distance_kernel_names[] = {
    {DistanceKernelType::gaussian, "gaussian"}, {DistanceKernelType::laplacian, "laplacian"}};

inline const char* distance_kernel_name(DistanceKernelType type) {
  return name_of(k_distance_kernel_names, type);
}

// The type named `name` (as distance_kernel_name writes it); throws ArgumentError naming `what`
// otherwise.
inline DistanceKernelType distance_kernel_from_name(const std::string& name,
                                                    const std::string& what = "domain kernel") {
  return value_named(k_distance_kernel_names, name, what);
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

// Throws ArgumentError unless the variant can run with `content` (a module without the q.k
// range kernel serves only the variants whose range kernel can be turned off).
inline void check_variant_content(const AttentionVariantOptions& o, bool content,
                                  const std::string& what) {
  detail::require_argument(content || !needs_content(o.type), what,
                           detail::concat("true for the ", attention_variant_name(o.type),
                                          " variant (it has a query-key range kernel)"),
                           "false");
}

// The variants' learned parameters, public under their state_dict names (empty for the other
// variants); MultiHeadAttention holds them.
template <class T>
struct VariantParameters {
  Vector<T> rho;        // bilateral: H entries, sigma_h = softplus(rho_h)
  Vector<T> fourier_r;  // fourier: [R], the frequency of sinc(R (q_c - k_c)), init 1

  // sigma_h = softplus(rho_h) of the bilateral variant.
  Vector<T> bilateral_sigma() const {
    return rho.unaryExpr([](T x) { return softplus(x); });
  }

  // The initial values: rho_h with softplus(rho_h) = sigma_init (bilateral), R = 1 (fourier).
  void reset_variant_parameters(const AttentionVariantOptions& v, Index heads) {
    rho = v.type == AttentionVariantType::bilateral
              ? Vector<T>::Constant(heads, inverse_softplus(static_cast<T>(v.sigma_init)))
              : Vector<T>();
    fourier_r = v.type == AttentionVariantType::fourier ? Vector<T>::Ones(1) : Vector<T>();
  }

  // Throws ShapeError / ArgumentError naming the parameter that does not fit the variant.
  void check_variant_parameters(const AttentionVariantOptions& v, Index heads) const {
    const Index rho_size = v.type == AttentionVariantType::bilateral ? heads : 0;
    detail::require_shape(rho.size() == rho_size, "rho",
                          rho_size ? detail::concat("[", rho_size, "] (one per head)")
                                   : "[0] (the variant is not bilateral)",
                          detail::concat("[", rho.size(), "]"));
    detail::require_argument(rho.allFinite(), "rho", "finite values", rho.transpose());
    const Index r_size = v.type == AttentionVariantType::fourier ? 1 : 0;
    detail::require_shape(fourier_r.size() == r_size, "fourier_r",
                          r_size ? "[1]" : "[0] (the variant is not fourier)",
                          detail::concat("[", fourier_r.size(), "]"));
    detail::require_argument(fourier_r.allFinite(), "fourier_r", "a finite value",
                             fourier_r.transpose());
  }

  // visit(prefix + name, parameter) for the parameters the variant has.
  void visit_variant_parameters(const std::string& prefix, ParameterVisitor<T>& visit) {
    if (rho.size()) visit(prefix + "rho", rho);
    if (fourier_r.size()) visit(prefix + "fourier_r", fourier_r);
  }
};

// The plan of a variant for one call. `content` false drops the q.k range kernel (positional-
// only attention); every range kernel is scaled by 1 / sqrt(d).
template <class T>
AttentionPlan<T> attention_plan(const AttentionVariantOptions& v,
                                const VariantParameters<T>& parameters, bool content,
                                const PlanContext<T>& call) {
  const ScoreShape& shape = call.shape;
  AttentionPlan<T> plan;
  plan.range.type = content ? RangeKernelType::dot_product : RangeKernelType::none;
  plan.range.scale = T(1) / std::sqrt(static_cast<T>(shape.head_dim));
  plan.boost = v.boost;
  plan.reads_stack_values = uses_stack_values(v.type);
  switch (v.type) {
    case AttentionVariantType::softmax:
      break;
    case AttentionVariantType::bilateral:
      plan.score_terms.push_back(
          std::make_shared<DistanceKernel<T>>(v.domain, parameters.bilateral_sigma()));
      break;
    case AttentionVariantType::robust_kde:
      plan.key_weighting =
          std::make_shared<HuberKeyWeighting<T>>(plan.range.scale, static_cast<T>(v.huber_a));
      [[fallthrough]];
    case AttentionVariantType::kde:
      plan.range.type = RangeKernelType::negative_squared_distance;  // -|q - k|^2 / sqrt(d)
      plan.transforms.push_back(std::make_shared<KeyNormalization<T>>());
      break;
    case AttentionVariantType::fourier:
      detail::require_shape(parameters.fourier_r.size() == 1, "fourier_r", "[1]",
                            detail::concat("[", parameters.fourier_r.size(), "]"));
      plan.range.type = RangeKernelType::sinc4;
      plan.range.frequency = parameters.fourier_r[0];
      plan.epsilon = static_cast<T>(v.fourier_epsilon);
      break;
    case AttentionVariantType::elliptical:
      if (call.stack.previous)
        plan.transforms.push_back(std::make_shared<QueryMetric<T>>(
            elliptical_metric<T>(call.values, *call.stack.previous, shape.batch, shape.heads,
                                 static_cast<T>(v.elliptical_delta),
                                 [&](Index b, Index j) { return call.mask.keeps_key(b, j); }),
            shape.heads));
      break;
    case AttentionVariantType::neutreno:
      if (call.stack.first) {
        detail::require_shape(shape.keys == shape.queries, "keys of NeuTRENO attention",
                              detail::concat(shape.queries, " (as many as queries)"),
                              detail::concat(shape.keys));
        plan.context_term = std::make_shared<NeutrenoTerm<T>>(static_cast<T>(v.neutreno_lambda));
      }
      break;
  }
  return plan;
}

// The chain rule from a call's plan back to the variant's parameters: term_gradients holds the
// gradients of the plan's score terms (one per plan.score_terms, factors of their types, as
// zeroed_copy makes them), frequency dL/dR of the range kernel; gradient's rho and fourier_r
// accumulate them.
template <class T>
void add_variant_gradients(const AttentionVariantOptions& v, const VariantParameters<T>& parameters,
                           const std::vector<std::shared_ptr<KernelFactor<T>>>& term_gradients,
                           T frequency, VariantParameters<T>& gradient) {
  switch (v.type) {
    case AttentionVariantType::bilateral: {
      // sigma_h = softplus(rho_h).
      const auto* distance = dynamic_cast<const DistanceKernel<T>*>(term_gradients.at(0).get());
      detail::require_argument(distance != nullptr, "bilateral plan gradients",
                               "the DistanceKernel's gradient first", "another factor");
      for (Index h = 0; h < parameters.rho.size(); ++h)
        gradient.rho[h] += distance->sigma[h] * softplus_derivative(parameters.rho[h]);
      return;
    }
    case AttentionVariantType::fourier:
      gradient.fourier_r[0] += frequency;
      return;
    default:
      return;  // the other plans' factors have no parameters of the module
  }
}

}  // namespace attnlens
