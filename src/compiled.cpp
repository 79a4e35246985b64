// attnlens::compiled: the heavy templates instantiated once, for float and double, and the
// functions whose inline definitions cost every translation unit seconds (the registry of
// position encodings). A program that links the target gets ATTNLENS_COMPILED, under which the
// headers only declare these (core/compiled.hpp and the `extern template` declarations at the
// end of the headers), so its own translation units do not compile them again (README,
// "Compile time"). The header-only use is unchanged.
#define ATTNLENS_COMPILING
#include "attnlens/attnlens.hpp"
#include "attnlens/io/model.hpp"

namespace attnlens {

template class MultiHeadAttention<float>;
template class MultiHeadAttention<double>;
template class TransformerEncoderLayer<float>;
template class TransformerEncoderLayer<double>;
template class TransformerEncoder<float>;
template class TransformerEncoder<double>;
template class VisionTransformer<float>;
template class VisionTransformer<double>;

namespace io {
#define ATTNLENS_MODEL_INSTANTIATIONS(T)                                                       \
  template void save_encoder_model<T>(const EncoderModelConfig&, const TransformerEncoder<T>&, \
                                      const std::string&);                                     \
  template TransformerEncoder<T> encoder_from_weights<T>(                                      \
      const EncoderModelConfig&, const SafeTensors&, const std::string&, const std::string&);  \
  template TransformerEncoder<T> load_encoder_model<T>(const std::string&);
ATTNLENS_MODEL_INSTANTIATIONS(float)
ATTNLENS_MODEL_INSTANTIATIONS(double)
}  // namespace io

}  // namespace attnlens
