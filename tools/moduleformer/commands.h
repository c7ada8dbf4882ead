// Subcommands of the `moduleformer` command-line tool.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "engine/model.h"

namespace mf::cli {

// Loads --model DIR, or builds --random-weights CONFIG, onto --device.
absl::StatusOr<std::unique_ptr<Model>> LoadModelFromFlags();

int RunVerify();
int RunGenerate();
int RunTokenize();

}  // namespace mf::cli
