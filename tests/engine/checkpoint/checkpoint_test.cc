#include "engine/checkpoint/checkpoint.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "engine/checkpoint/weights.h"
#include "engine/cpu/cpu_backend.h"
#include "tests/test_util.h"

namespace mf {
namespace {

using ::testing::HasSubstr;
namespace fs = std::filesystem;

const std::vector<int32_t> kPrompt = {5, 17, 300, 2, 41, 41, 9};

std::unique_ptr<Model> CpuModel(const ModelWeights& weights) {
  KvCacheOptions options;
  options.num_blocks = 16;
  auto model = Model::Create(weights, MakeCpuBackend(), options);
  EXPECT_TRUE(model.ok()) << model.status();
  return model.ok() ? *std::move(model) : nullptr;
}

void RemoveTensor(std::vector<TensorToWrite>& tensors, const std::string& name) {
  tensors.erase(std::remove_if(tensors.begin(), tensors.end(), [&](const TensorToWrite& t) { return t.name == name; }),
                tensors.end());
}

TensorToWrite* FindTensor(std::vector<TensorToWrite>& tensors, const std::string& name) {
  for (TensorToWrite& tensor : tensors) {
    if (tensor.name == name) return &tensor;
  }
  return nullptr;
}

// IEEE half from float, round to nearest even (normal range; subnormals flushed to the nearest step).
uint16_t FloatToF16(float value) {
  const float magnitude = std::fabs(value);
  const uint16_t sign = std::signbit(value) ? 0x8000 : 0;
  if (magnitude < std::ldexp(1.0f, -14)) {
    return sign | static_cast<uint16_t>(std::nearbyint(magnitude * std::ldexp(1.0f, 24)));
  }
  int exponent;
  const float fraction = std::frexp(magnitude, &exponent);  // magnitude = fraction * 2^exponent, fraction in [0.5, 1)
  const uint32_t mantissa = static_cast<uint32_t>(std::nearbyint((fraction * 2 - 1) * 1024));
  return sign | static_cast<uint16_t>(((exponent + 14) << 10) + mantissa);
}

void ConvertFloatTensors(std::vector<TensorToWrite>& tensors, DType target) {
  for (TensorToWrite& tensor : tensors) {
    if (tensor.dtype != DType::kBF16) continue;
    const size_t count = tensor.bytes.size() / 2;
    std::vector<float> values(count);
    ConvertToFloat(DType::kBF16, tensor.bytes.data(), count, values.data());
    tensor.dtype = target;
    tensor.bytes.assign(count * DTypeSize(target), 0);
    for (size_t i = 0; i < count; ++i) {
      if (target == DType::kF32) {
        std::memcpy(&tensor.bytes[i * 4], &values[i], 4);
      } else {
        const uint16_t half = FloatToF16(values[i]);
        std::memcpy(&tensor.bytes[i * 2], &half, 2);
      }
    }
  }
}

absl::Status LoadStatus(const std::string& dir) { return LoadWeights(dir).status(); }

TEST(CheckpointTest, IgnoresTrainingBuffersAndReadsExpertCountsFromShapes) {
  auto checkpoint = Checkpoint::Open(testing::ReferenceDir("pruned"));
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  auto weights = LoadWeights(testing::ReferenceDir("pruned"));
  ASSERT_TRUE(weights.ok()) << weights.status();
  bool differs_from_config = false;
  for (size_t layer = 0; layer < weights->layers.size(); ++layer) {
    for (auto [mixture, prefix] : {std::pair{&weights->layers[layer].attention, "attn.q_proj."},
                                   std::pair{&weights->layers[layer].mlp, "mlpf."}}) {
      auto experts = (*checkpoint)->Find("transformer.h." + std::to_string(layer) + "." + prefix + "experts.weight");
      ASSERT_TRUE(experts.ok());
      EXPECT_EQ(mixture->num_experts, (*experts)->shape[0]);
    }
    differs_from_config |= weights->layers[layer].attention.num_experts != weights->config.n_att_experts ||
                           weights->layers[layer].mlp.num_experts != weights->config.n_mlp_experts;
  }
  EXPECT_TRUE(differs_from_config) << "the pruned fixture should prune some layer";
}

TEST(CheckpointTest, MissingTensorIsNamed) {
  testing::ScratchDir dir;
  testing::WriteEditedCheckpoint("molm-tiny", dir.path(), [](auto& tensors) {
    RemoveTensor(tensors, "transformer.h.1.mlpf.output_experts.weight");
  });
  absl::Status status = LoadStatus(dir.path());
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(status.message(), HasSubstr("missing tensor 'transformer.h.1.mlpf.output_experts.weight'"));
}

TEST(CheckpointTest, WrongShapeIsNamed) {
  testing::ScratchDir dir;
  testing::WriteEditedCheckpoint("molm-tiny", dir.path(), [](auto& tensors) {
    TensorToWrite* tensor = FindTensor(tensors, "transformer.ln_f.weight");
    tensor->shape = {32};
    tensor->bytes.resize(64);
  });
  EXPECT_THAT(LoadStatus(dir.path()).message(),
              HasSubstr("tensor 'transformer.ln_f.weight' has shape [32], expected [64]"));
}

TEST(CheckpointTest, NonFloatWeightIsRejected) {
  testing::ScratchDir dir;
  testing::WriteEditedCheckpoint("molm-tiny", dir.path(), [](auto& tensors) {
    TensorToWrite* tensor = FindTensor(tensors, "transformer.h.0.ln_1.bias");
    tensor->dtype = DType::kI16;
  });
  EXPECT_THAT(LoadStatus(dir.path()).message(),
              HasSubstr("tensor 'transformer.h.0.ln_1.bias' has dtype I16; weights must be BF16, F16 or F32"));
}

TEST(CheckpointTest, TruncatedShardNamesFileAndTensor) {
  testing::ScratchDir dir;
  testing::WriteEditedCheckpoint("molm-tiny", dir.path(), [](auto&) {});
  fs::resize_file(dir.File("model.safetensors"), fs::file_size(dir.File("model.safetensors")) - 1000);
  absl::Status status = LoadStatus(dir.path());
  EXPECT_THAT(status.message(), HasSubstr(dir.File("model.safetensors")));
  EXPECT_THAT(status.message(), HasSubstr("tensor 'transformer.wte.weight': data offsets"));
}

TEST(CheckpointTest, F32AndF16CheckpointsGiveTheSameLogits) {
  auto reference_model = testing::LoadReferenceModel("molm-tiny");
  const std::vector<float> expected = testing::PromptLogits(*reference_model, kPrompt);
  for (DType dtype : {DType::kF32, DType::kF16}) {
    testing::ScratchDir dir;
    testing::WriteEditedCheckpoint("molm-tiny", dir.path(), [&](auto& tensors) { ConvertFloatTensors(tensors, dtype); });
    auto weights = LoadWeights(dir.path());
    ASSERT_TRUE(weights.ok()) << weights.status();
    EXPECT_EQ(weights->wte.dtype, dtype);
    const std::vector<float> logits = testing::PromptLogits(*CpuModel(*weights), kPrompt);
    ASSERT_EQ(logits.size(), expected.size());
    double worst = 0;
    for (size_t i = 0; i < logits.size(); ++i) worst = std::max(worst, std::abs(double(logits[i]) - expected[i]));
    // bf16 values widen to f32 exactly; to f16 exactly except below f16's normal range.
    EXPECT_LE(worst, dtype == DType::kF32 ? 0.0 : 1e-4) << DTypeName(dtype);
  }
}

// Splits molm-tiny into two shards with an index, as sharded Hugging Face checkpoints are.
void WriteShardedCopy(const std::string& dir, bool corrupt_index) {
  std::vector<TensorToWrite> tensors = testing::ReadAllTensors(testing::ReferenceDir("molm-tiny") + "/model.safetensors");
  const size_t half = tensors.size() / 2;
  std::vector<TensorToWrite> first(tensors.begin(), tensors.begin() + half);
  std::vector<TensorToWrite> second(tensors.begin() + half, tensors.end());
  ASSERT_TRUE(WriteSafetensors(dir + "/model-00001-of-00002.safetensors", first).ok());
  ASSERT_TRUE(WriteSafetensors(dir + "/model-00002-of-00002.safetensors", second).ok());
  std::string index = "{\"metadata\": {}, \"weight_map\": {";
  for (size_t i = 0; i < tensors.size(); ++i) {
    const bool in_first = (i < half) != (corrupt_index && i == 0);
    index += (i ? ", \"" : "\"") + tensors[i].name + "\": \"model-0000" + (in_first ? "1" : "2") + "-of-00002.safetensors\"";
  }
  testing::WriteFile(dir + "/model.safetensors.index.json", index + "}}");
  fs::copy_file(testing::ReferenceDir("molm-tiny") + "/config.json", dir + "/config.json");
}

TEST(CheckpointTest, ShardedCheckpointLoadsLikeTheSingleFile) {
  testing::ScratchDir dir;
  WriteShardedCopy(dir.path(), /*corrupt_index=*/false);
  auto weights = LoadWeights(dir.path());
  ASSERT_TRUE(weights.ok()) << weights.status();
  auto reference_model = testing::LoadReferenceModel("molm-tiny");
  EXPECT_EQ(testing::PromptLogits(*CpuModel(*weights), kPrompt), testing::PromptLogits(*reference_model, kPrompt));
}

TEST(CheckpointTest, ShardIndexMustMatchShards) {
  testing::ScratchDir dir;
  WriteShardedCopy(dir.path(), /*corrupt_index=*/true);
  EXPECT_THAT(LoadStatus(dir.path()).message(), HasSubstr("is listed in shard 'model-00002-of-00002.safetensors'"));
  testing::WriteFile(dir.File("model.safetensors.index.json"), "{\"weight_map\": [}");
  EXPECT_THAT(LoadStatus(dir.path()).message(), HasSubstr("model.safetensors.index.json: malformed JSON"));
}

TEST(CheckpointTest, PickleOnlyAndEmptyDirectoriesAreClearErrors) {
  testing::ScratchDir dir;
  fs::copy_file(testing::ReferenceDir("molm-tiny") + "/config.json", dir.File("config.json"));
  EXPECT_THAT(LoadStatus(dir.path()).message(), HasSubstr("no model.safetensors"));
  testing::WriteFile(dir.File("pytorch_model.bin"), "not a pickle");
  absl::Status status = LoadStatus(dir.path());
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(status.message(), HasSubstr("convert them to safetensors"));
  EXPECT_THAT(status.message(), HasSubstr(absl::StrCat("moduleformer convert --model ", dir.path(), " --out ",
                                                       dir.path(), "-safetensors")));
  EXPECT_THAT(LoadStatus(dir.File("nope")).message(), HasSubstr("not a directory"));
}

TEST(CheckpointTest, UnsupportedGateTypeFailsAtLoad) {
  testing::ScratchDir dir;
  testing::WriteEditedCheckpoint("molm-tiny", dir.path(), [](auto&) {});
  std::string config = testing::ReadFile(dir.File("config.json"));
  config.replace(config.find("\"mlp\""), 5, "\"linear\"");
  testing::WriteFile(dir.File("config.json"), config);
  EXPECT_THAT(LoadStatus(dir.path()).message(), HasSubstr("config.json: field 'gate_type' 'linear' is not supported"));
}

// A tensor edited to hold one non-finite bf16 value at `element`.
void PoisonBf16(std::vector<TensorToWrite>& tensors, const std::string& name, size_t element, uint16_t bits) {
  TensorToWrite* tensor = FindTensor(tensors, name);
  ASSERT_NE(tensor, nullptr) << name;
  ASSERT_EQ(tensor->dtype, DType::kBF16);
  std::memcpy(&tensor->bytes[element * 2], &bits, 2);
}

TEST(CheckpointTest, NonFiniteWeightsAreNamedWithTheirPosition) {
  struct Case {
    const char* tensor;
    size_t element;
    uint16_t bits;
    const char* value;
  };
  const Case cases[] = {{"lm_head.weight", 100, 0x7fc0, "nan"},
                        {"transformer.ln_f.weight", 3, 0x7f80, "inf"},
                        {"transformer.h.1.mlpf.experts.weight", 0, 0xff80, "-inf"}};
  for (const Case& c : cases) {
    testing::ScratchDir dir;
    testing::WriteEditedCheckpoint("molm-tiny", dir.path(), [&](auto& tensors) { PoisonBf16(tensors, c.tensor, c.element, c.bits); });
    absl::StatusOr<ModelWeights> weights = LoadWeights(dir.path());
    ASSERT_TRUE(weights.ok()) << weights.status();  // loading alone does not read the values
    absl::Status status = CheckWeightsFinite(*weights);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(status.message(), HasSubstr(absl::StrCat("tensor '", c.tensor, "': element ", c.element, " of ")));
    EXPECT_THAT(status.message(), HasSubstr(absl::StrCat(" is ", c.value)));
  }
  absl::StatusOr<ModelWeights> clean = LoadWeights(testing::ReferenceDir("molm-tiny"));
  ASSERT_TRUE(clean.ok());
  EXPECT_TRUE(CheckWeightsFinite(*clean).ok());
  // Every tensor the forward pass reads, as stored: more than the embeddings and head,
  // less than the file (which also holds its header and training buffers).
  EXPECT_GT(TotalWeightBytes(*clean), clean->wte.num_bytes() + clean->lm_head.num_bytes());
  EXPECT_LT(TotalWeightBytes(*clean), fs::file_size(testing::ReferenceDir("molm-tiny") + "/model.safetensors"));
}

}  // namespace
}  // namespace mf
