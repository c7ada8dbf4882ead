// Element types found in checkpoints and the conversions the engine needs.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace mf {

enum class DType { kF32, kF16, kBF16, kF64, kI64, kI32, kI16, kI8, kU8, kBool };

// Parses a safetensors dtype string ("BF16", "F32", ...); nullopt when unknown.
std::optional<DType> ParseDType(std::string_view name);
const char* DTypeName(DType dtype);
size_t DTypeSize(DType dtype);
// Weights may be stored in these; everything else is a training buffer or a defect.
bool IsFloatWeightType(DType dtype);

float Bf16ToFloat(uint16_t bits);
float F16ToFloat(uint16_t bits);
// Round-to-nearest-even, as torch does when casting to bfloat16.
uint16_t FloatToBf16(float value);

// Widens `count` elements of a floating dtype to float32.
void ConvertToFloat(DType dtype, const void* src, size_t count, float* dst);

}  // namespace mf
