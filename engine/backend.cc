#include "engine/backend.h"

#include "engine/base/status_macros.h"

namespace mf {

absl::Status Backend::RouterLogits(const Tensor& x, const Tensor& w1, const Tensor& b1, const Tensor& w2,
                                   Tensor& logits) {
  MF_ASSIGN_OR_RETURN(Tensor hidden, Allocate(activation_dtype(), {x.rows(), w1.rows()}));
  Linear(x, w1, &b1, hidden);
  GeluExact(hidden);
  Linear(hidden, w2, nullptr, logits);
  return absl::OkStatus();
}

}  // namespace mf
