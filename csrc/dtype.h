// Tensor element types, named as the Open Inference Protocol (and Triton) name them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace loopserve {

enum class DType : uint8_t {
  kBool, kUInt8, kUInt16, kUInt32, kUInt64,
  kInt8, kInt16, kInt32, kInt64,
  kFP16, kFP32, kFP64,
  kBytes,  // variable-length elements, each a 4-byte little-endian length and its bytes
};

inline constexpr DType kAllDTypes[] = {
    DType::kBool,  DType::kUInt8, DType::kUInt16, DType::kUInt32, DType::kUInt64, DType::kInt8,
    DType::kInt16, DType::kInt32, DType::kInt64,  DType::kFP16,   DType::kFP32,   DType::kFP64,
    DType::kBytes,
};

// Bytes per element; 0 for BYTES, whose elements vary in size.
constexpr size_t dtype_size(DType t) {
  switch (t) {
    case DType::kBytes: return 0;
    case DType::kBool: case DType::kUInt8: case DType::kInt8: return 1;
    case DType::kUInt16: case DType::kInt16: case DType::kFP16: return 2;
    case DType::kUInt32: case DType::kInt32: case DType::kFP32: return 4;
    case DType::kUInt64: case DType::kInt64: case DType::kFP64: return 8;
  }
  return 0;
}

constexpr std::string_view dtype_name(DType t) {
  switch (t) {
    case DType::kBool: return "BOOL";
    case DType::kUInt8: return "UINT8";
    case DType::kUInt16: return "UINT16";
    case DType::kUInt32: return "UINT32";
    case DType::kUInt64: return "UINT64";
    case DType::kInt8: return "INT8";
    case DType::kInt16: return "INT16";
    case DType::kInt32: return "INT32";
    case DType::kInt64: return "INT64";
    case DType::kFP16: return "FP16";
    case DType::kFP32: return "FP32";
    case DType::kFP64: return "FP64";
    case DType::kBytes: return "BYTES";
  }
  return "?";
}

inline std::optional<DType> dtype_from_name(std::string_view name) {
  for (DType t : kAllDTypes)
    if (dtype_name(t) == name) return t;
  return std::nullopt;
}

}  // namespace loopserve
