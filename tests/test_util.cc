#include "tests/test_util.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "engine/cpu/cpu_backend.h"

namespace mf::testing {

namespace fs = std::filesystem;

std::string FixturesDir() {
  const char* override_dir = std::getenv("MF_FIXTURES_DIR");
  return override_dir != nullptr ? override_dir : MF_FIXTURES_DIR;
}

std::string ReferenceDir(const std::string& name) {
  const std::string dir = FixturesDir() + "/reference/" + name;
  if (!fs::exists(dir + "/config.json")) {
    ADD_FAILURE() << "missing test data: " << dir << "/config.json (see tests/fixtures/README.md)";
  }
  return dir;
}

std::string DemoModelDir() {
  const char* override_dir = std::getenv("MF_DEMO_MODEL_DIR");
  return override_dir != nullptr ? override_dir : FixturesDir() + "/../../models/demo";
}

const Tokenizer& Gpt2Tokenizer() {
  static const Tokenizer* tokenizer = [] {
    const std::string dir = FixturesDir() + "/tokenizer/gpt2";
    absl::StatusOr<std::unique_ptr<Tokenizer>> loaded = Tokenizer::Load(dir);
    if (!loaded.ok()) {
      std::fprintf(stderr, "missing test data: %s (see tests/fixtures/README.md)\n",
                   std::string(loaded.status().message()).c_str());
      std::exit(1);
    }
    return loaded->release();
  }();
  return *tokenizer;
}

std::vector<std::string> ReferenceModelNames() {
  std::vector<std::string> names;
  std::error_code error;
  // Also called while tests are being listed, where a throw would abort the listing: a
  // missing folder yields one name that fails, naming the path, when a test uses it.
  for (const auto& entry : fs::directory_iterator(FixturesDir() + "/reference", error)) {
    if (fs::exists(entry.path() / "cases.json")) names.push_back(entry.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  if (names.empty()) names.push_back("no-reference-fixtures-found");
  return names;
}

ScratchDir::ScratchDir() {
  std::string pattern = (fs::temp_directory_path() / "mf-test-XXXXXX").string();
  path_ = ::mkdtemp(pattern.data()) != nullptr ? pattern : "";
  if (path_.empty()) ADD_FAILURE() << "mkdtemp failed";
}

ScratchDir::~ScratchDir() {
  std::error_code ignored;
  if (!path_.empty()) fs::remove_all(path_, ignored);
}

std::string ReadFile(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  std::stringstream text;
  text << file.rdbuf();
  return text.str();
}

void WriteFile(const std::string& path, const std::string& contents) {
  std::ofstream file(path, std::ios::binary);
  file << contents;
}

std::vector<TensorToWrite> ReadAllTensors(const std::string& path) {
  auto file = SafetensorsFile::Open(path);
  EXPECT_TRUE(file.ok()) << file.status();
  std::vector<TensorToWrite> tensors;
  if (!file.ok()) return tensors;
  for (const auto& [name, view] : (*file)->tensors()) {
    const auto* bytes = static_cast<const uint8_t*>(view.data);
    tensors.push_back({name, view.dtype, view.shape, std::vector<uint8_t>(bytes, bytes + view.num_bytes)});
  }
  return tensors;
}

std::unique_ptr<Model> LoadReferenceModel(const std::string& name, int num_blocks, int block_size) {
  auto weights = LoadWeights(ReferenceDir(name));
  EXPECT_TRUE(weights.ok()) << weights.status();
  if (!weights.ok()) return nullptr;
  KvCacheOptions options;
  options.num_blocks = num_blocks;
  options.block_size = block_size;
  auto model = Model::Create(*weights, MakeCpuBackend(), options);
  EXPECT_TRUE(model.ok()) << model.status();
  return model.ok() ? *std::move(model) : nullptr;
}

std::vector<float> PromptLogits(Model& model, const std::vector<int32_t>& prompt) {
  auto blocks = model.kv_cache().allocator().Allocate(model.kv_cache().BlocksFor(static_cast<int64_t>(prompt.size())));
  EXPECT_TRUE(blocks.ok()) << blocks.status();
  if (!blocks.ok()) return {};
  ForwardBatch batch;
  batch.sequences.push_back(SequenceChunk{prompt, 0, *blocks, /*all_logits=*/true});
  auto output = model.Forward(batch);
  model.kv_cache().allocator().Release(*blocks);
  EXPECT_TRUE(output.ok()) << output.status();
  return output.ok() ? output->logits : std::vector<float>{};
}

void WriteEditedCheckpoint(const std::string& reference, const std::string& dir,
                           const std::function<void(std::vector<TensorToWrite>&)>& edit) {
  std::vector<TensorToWrite> tensors = ReadAllTensors(ReferenceDir(reference) + "/model.safetensors");
  edit(tensors);
  ASSERT_TRUE(WriteSafetensors(dir + "/model.safetensors", tensors).ok());
  fs::copy_file(ReferenceDir(reference) + "/config.json", dir + "/config.json", fs::copy_options::overwrite_existing);
}

}  // namespace mf::testing
