// Helpers shared by the tests: fixture locations, scratch directories, and small
// checkpoint surgery for loader-error tests.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "engine/checkpoint/safetensors.h"
#include "engine/text/tokenizer.h"
#include "absl/synchronization/mutex.h"
#include "engine/model.h"
#include "engine/sequence.h"

namespace mf::testing {

// Collects the updates of one engine request: its tokens, its log-probabilities and its
// final update; Wait() blocks until that arrives.
struct Collector {
  absl::Mutex mutex;
  std::vector<int32_t> tokens;
  std::vector<SampleResult> logprobs;
  std::vector<GenerationUpdate> finals;
  bool done = false;

  UpdateCallback Callback() {
    return [this](GenerationUpdate&& update) {
      absl::MutexLock lock(&mutex);
      tokens.insert(tokens.end(), update.tokens.begin(), update.tokens.end());
      logprobs.insert(logprobs.end(), update.logprobs.begin(), update.logprobs.end());
      if (update.finished) {
        finals.push_back(std::move(update));
        done = true;
      }
    };
  }
  GenerationUpdate Wait() {
    absl::MutexLock lock(&mutex);
    mutex.Await(absl::Condition(&done));
    return finals.back();
  }
};

// tests/fixtures (overridable with MF_FIXTURES_DIR).
std::string FixturesDir();
std::string ReferenceDir(const std::string& name);
// The built-in demo model: $MF_DEMO_MODEL_DIR, else the source tree's models/demo.
std::string DemoModelDir();
// GPT-2's tokenizer from fixtures/tokenizer/gpt2, loaded once; the test program stops
// with a message naming the path when it cannot be read.
const Tokenizer& Gpt2Tokenizer();

// Names of every reference model under fixtures/reference/.
std::vector<std::string> ReferenceModelNames();

// A fresh empty directory, removed when the object dies.
class ScratchDir {
 public:
  ScratchDir();
  ~ScratchDir();
  const std::string& path() const { return path_; }
  std::string File(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

std::string ReadFile(const std::string& path);
void WriteFile(const std::string& path, const std::string& contents);

// Every tensor of a safetensors file, copied out (so it can be edited and rewritten).
std::vector<TensorToWrite> ReadAllTensors(const std::string& path);

// The CPU model of a reference fixture with a cache of `num_blocks` blocks.
std::unique_ptr<Model> LoadReferenceModel(const std::string& name, int num_blocks = 256, int block_size = 16);

// Logits of every position of `prompt`, run alone through a fresh cache allocation.
std::vector<float> PromptLogits(Model& model, const std::vector<int32_t>& prompt);

// Copies a reference checkpoint into `dir`, after `edit` has changed its tensors.
void WriteEditedCheckpoint(const std::string& reference, const std::string& dir,
                           const std::function<void(std::vector<TensorToWrite>&)>& edit);

}  // namespace mf::testing
