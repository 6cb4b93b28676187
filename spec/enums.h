// The enumerated choices of a training run, and their spellings in JSON configs and on command
// lines. Strings exist only at that boundary: parse_* turns one into the enum (or an error that
// names the field and the accepted values), *_name turns the enum back into the same string.
//
//   train.device            Device       cpu | cuda   (the tensor's Device, core/tensor.h)
//   train.precision         Precision    auto | fp32 | bf16
//   train.recompute         Recompute    none | selective | full
//   parallel.cp_attention   CpAttention  tree | ring
//   model.attention         Attention    mha | mla
#pragma once

#include <string_view>

#include "core/status.h"
#include "core/tensor.h"

namespace grove {

// Where the model computes: Device::kCPU (OpenBLAS + own kernels, every parallel layout) or
// Device::kCUDA (one GPU per rank). device_name() (core/tensor.h) gives "cpu" / "cuda".
StatusOr<Device> parse_device(std::string_view s, std::string_view field = "device");

// Compute precision. kAuto: bf16 on cuda, fp32 on cpu (fp32 stays the CPU's default and
// reference). kBf16: bf16 GEMM operands with fp32 accumulation, fp32 master weights, gradients
// and optimizer state; on the CPU activations stay fp32 outside the GEMMs and the CPU must have
// AVX512_BF16 or AMX-BF16 (docs/training.md#precision).
enum class Precision { kAuto, kFp32, kBf16 };
const char* precision_name(Precision p);  // "auto", "fp32", "bf16"
StatusOr<Precision> parse_precision(std::string_view s, std::string_view field = "precision");

// What a block keeps for the backward: everything (kNone), everything but the attention
// probabilities (kSelective), or only its input, re-running the block's forward (kFull).
enum class Recompute { kNone, kSelective, kFull };
const char* recompute_name(Recompute r);  // "none", "selective", "full"
StatusOr<Recompute> parse_recompute(std::string_view s, std::string_view field = "recompute");

// Attention across the context-parallel group (parallel/cp_attention.h).
enum class CpAttention { kTree, kRing };
const char* cp_attention_name(CpAttention a);  // "tree", "ring"
StatusOr<CpAttention> parse_cp_attention(std::string_view s,
                                         std::string_view field = "cp_attention");

// The attention block (docs/model.md): multi-head attention with optional GQA (kMha), or
// DeepSeek-V2's multi-head latent attention (kMla, model.mla).
enum class Attention { kMha, kMla };
const char* attention_name(Attention a);  // "mha", "mla"
StatusOr<Attention> parse_attention(std::string_view s, std::string_view field = "attention");

}  // namespace grove
