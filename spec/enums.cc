#include "spec/enums.h"

#include <string>
#include <utility>

namespace grove {

namespace {

// One table per enum: the value and its spelling, in the order the error message lists them.
template <typename E, size_t N>
StatusOr<E> parse_enum(std::string_view s, std::string_view field,
                       const std::pair<E, const char*> (&table)[N], std::string_view accepted) {
  for (const auto& [value, name] : table)
    if (s == name) return value;
  return Status::Error(std::string(field) + " must be " + std::string(accepted) + " (got '" +
                       std::string(s) + "')");
}

template <typename E, size_t N>
const char* enum_name(E e, const std::pair<E, const char*> (&table)[N]) {
  for (const auto& [value, name] : table)
    if (value == e) return name;
  return "?";
}

constexpr std::pair<Device, const char*> kDevices[] = {{Device::kCPU, "cpu"},
                                                       {Device::kCUDA, "cuda"}};
constexpr std::pair<Precision, const char*> kPrecisions[] = {
    {Precision::kAuto, "auto"}, {Precision::kBf16, "bf16"}, {Precision::kFp32, "fp32"}};
constexpr std::pair<Recompute, const char*> kRecomputes[] = {
    {Recompute::kNone, "none"}, {Recompute::kSelective, "selective"}, {Recompute::kFull, "full"}};
constexpr std::pair<CpAttention, const char*> kCpAttentions[] = {{CpAttention::kTree, "tree"},
                                                                 {CpAttention::kRing, "ring"}};
constexpr std::pair<Attention, const char*> kAttentions[] = {{Attention::kMha, "mha"},
                                                             {Attention::kMla, "mla"}};

}  // namespace

StatusOr<Device> parse_device(std::string_view s, std::string_view field) {
  return parse_enum(s, field, kDevices, "cpu or cuda");
}

const char* precision_name(Precision p) {
  return enum_name(p, kPrecisions);
}
StatusOr<Precision> parse_precision(std::string_view s, std::string_view field) {
  return parse_enum(s, field, kPrecisions, "auto, bf16 or fp32");
}

const char* recompute_name(Recompute r) {
  return enum_name(r, kRecomputes);
}
StatusOr<Recompute> parse_recompute(std::string_view s, std::string_view field) {
  return parse_enum(s, field, kRecomputes, "one of none | selective | full");
}

const char* cp_attention_name(CpAttention a) {
  return enum_name(a, kCpAttentions);
}
StatusOr<CpAttention> parse_cp_attention(std::string_view s, std::string_view field) {
  return parse_enum(s, field, kCpAttentions, "tree or ring");
}

const char* attention_name(Attention a) {
  return enum_name(a, kAttentions);
}
StatusOr<Attention> parse_attention(std::string_view s, std::string_view field) {
  return parse_enum(s, field, kAttentions, "mha or mla");
}

}  // namespace grove
