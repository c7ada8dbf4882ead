// The command-line flags that name a model and where it runs, shared by the
// server and the CLI: --model, --random-weights, --seed, --device, --precision,
// --kv-cache-mb, --kv-cache-blocks, --block-size.
#pragma once

#include "engine/model_loader.h"

namespace mf {

ModelSource ModelSourceFromFlags();

}  // namespace mf
