// The command-line flags that name a model and where it runs, shared by the
// server and the CLI: --model, --random-weights, --seed, --device, --precision,
// --kv-cache-mb, --kv-cache-blocks, --block-size.
#pragma once

#include <string>

#include "engine/model_loader.h"

namespace mf {

// Without --model or --random-weights, the model is the built-in demo model (DefaultModelDir).
ModelSource ModelSourceFromFlags();

// The built-in demo model's directory (models/demo of the build or source tree, or
// share/moduleformer/models/demo of an installed prefix); empty when none is found.
std::string DefaultModelDir();

}  // namespace mf
