#include "engine/checkpoint/safetensors.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>

#include "tests/test_util.h"

namespace mf {
namespace {

using ::testing::HasSubstr;

// A file with the given header text (length prefix computed) and `data_bytes` zeros.
std::string RawFile(const std::string& header, size_t data_bytes) {
  std::string bytes(8, '\0');
  const uint64_t length = header.size();
  std::memcpy(bytes.data(), &length, sizeof(length));
  return bytes + header + std::string(data_bytes, '\0');
}

absl::Status OpenRaw(const std::string& contents) {
  testing::ScratchDir dir;
  testing::WriteFile(dir.File("model.safetensors"), contents);
  return SafetensorsFile::Open(dir.File("model.safetensors")).status();
}

TEST(SafetensorsTest, WrittenFileReadsBack) {
  testing::ScratchDir dir;
  std::vector<uint8_t> bytes(6 * sizeof(float));
  for (size_t i = 0; i < 6; ++i) {
    const float value = static_cast<float>(i) + 0.5f;
    std::memcpy(&bytes[i * sizeof(float)], &value, sizeof(value));
  }
  ASSERT_TRUE(WriteSafetensors(dir.File("a.safetensors"),
                               {{"w", DType::kF32, {2, 3}, bytes}, {"b", DType::kBF16, {1}, {0x80, 0x3f}}})
                  .ok());
  auto file = SafetensorsFile::Open(dir.File("a.safetensors"));
  ASSERT_TRUE(file.ok()) << file.status();
  const TensorView& w = (*file)->tensors().at("w");
  EXPECT_EQ(w.shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(static_cast<const float*>(w.data)[5], 5.5f);
  EXPECT_EQ(Bf16ToFloat(*static_cast<const uint16_t*>((*file)->tensors().at("b").data)), 1.0f);
}

TEST(SafetensorsTest, ReadsMetadataAndIgnoresNothingSilently) {
  auto file = SafetensorsFile::Open(testing::ReferenceDir("molm-tiny") + "/model.safetensors");
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->metadata().at("format"), "pt");
  // Training buffers are kept in the index (the loader ignores them by name).
  EXPECT_EQ((*file)->tensors().at("transformer.h.0.attn.mask").dtype, DType::kI8);
}

TEST(SafetensorsTest, TruncatedBeforeHeaderLength) {
  absl::Status status = OpenRaw("abc");
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("truncated file"));
}

TEST(SafetensorsTest, HeaderLengthOutOfRange) {
  std::string contents = RawFile("{}", 0);
  const uint64_t huge = 1000;
  std::memcpy(contents.data(), &huge, sizeof(huge));
  EXPECT_THAT(OpenRaw(contents).message(), HasSubstr("header length 1000 out of range"));
}

TEST(SafetensorsTest, MalformedHeaderJson) {
  EXPECT_THAT(OpenRaw(RawFile("{\"w\": {\"dtype\": ", 0)).message(), HasSubstr("malformed JSON header"));
}

TEST(SafetensorsTest, UnknownDtypeNamesTheTensor) {
  EXPECT_THAT(OpenRaw(RawFile(R"({"w": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 2]}})", 2)).message(),
              HasSubstr("tensor 'w': unknown dtype 'Q4'"));
}

TEST(SafetensorsTest, OffsetsOutOfBounds) {
  EXPECT_THAT(OpenRaw(RawFile(R"({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})", 8)).message(),
              HasSubstr("tensor 'w': data offsets [0, 16) out of bounds"));
  EXPECT_THAT(OpenRaw(RawFile(R"({"w": {"dtype": "F32", "shape": [0], "data_offsets": [8, 4]}})", 8)).message(),
              HasSubstr("out of bounds"));
}

TEST(SafetensorsTest, SizeMustMatchShape) {
  EXPECT_THAT(OpenRaw(RawFile(R"({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}})", 8)).message(),
              HasSubstr("tensor 'w': holds 8 bytes but its shape and dtype need 12"));
}

TEST(SafetensorsTest, OverlappingTensors) {
  const std::string header =
      R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},)"
      R"( "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})";
  EXPECT_THAT(OpenRaw(RawFile(header, 12)).message(), HasSubstr("tensor 'b': data overlaps another tensor"));
}

TEST(SafetensorsTest, NegativeShape) {
  EXPECT_THAT(OpenRaw(RawFile(R"({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]}})", 0)).message(),
              HasSubstr("shape entries must be non-negative"));
}

TEST(SafetensorsTest, MissingFile) {
  auto file = SafetensorsFile::Open("/nonexistent/model.safetensors");
  EXPECT_EQ(file.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(file.status().message(), HasSubstr("/nonexistent/model.safetensors"));
}

}  // namespace
}  // namespace mf
