// spec/enums.h: every spelling parses to its enum and back, and a bad one gives an error that
// names the field and lists the accepted values.
#include "spec/enums.h"

#include <gtest/gtest.h>

namespace grove {
namespace {

TEST(Enums, NamesRoundTrip) {
  for (Recompute r : {Recompute::kNone, Recompute::kSelective, Recompute::kFull})
    EXPECT_EQ(parse_recompute(recompute_name(r)).value(), r) << recompute_name(r);
  for (Precision p : {Precision::kAuto, Precision::kFp32, Precision::kBf16})
    EXPECT_EQ(parse_precision(precision_name(p)).value(), p) << precision_name(p);
  for (CpAttention a : {CpAttention::kTree, CpAttention::kRing})
    EXPECT_EQ(parse_cp_attention(cp_attention_name(a)).value(), a) << cp_attention_name(a);
  for (Device d : {Device::kCPU, Device::kCUDA})
    EXPECT_EQ(parse_device(device_name(d)).value(), d) << device_name(d);
  EXPECT_STREQ(recompute_name(Recompute::kSelective), "selective");
  EXPECT_STREQ(precision_name(Precision::kBf16), "bf16");
  EXPECT_STREQ(cp_attention_name(CpAttention::kRing), "ring");
}

TEST(Enums, ErrorNamesFieldAndAcceptedValues) {
  EXPECT_EQ(parse_device("tpu", "train.device").status().message(),
            "train.device must be cpu or cuda (got 'tpu')");
  EXPECT_EQ(parse_precision("fp16", "train.precision").status().message(),
            "train.precision must be auto, bf16 or fp32 (got 'fp16')");
  EXPECT_EQ(parse_recompute("some", "parallel.recompute").status().message(),
            "parallel.recompute must be one of none | selective | full (got 'some')");
  EXPECT_EQ(parse_cp_attention("star", "--attention").status().message(),
            "--attention must be tree or ring (got 'star')");
  // Without a field: the option's own name.
  EXPECT_EQ(parse_recompute("Full").status().message(),
            "recompute must be one of none | selective | full (got 'Full')");
  // Exact spellings only: no case folding, no surrounding blanks.
  EXPECT_FALSE(parse_device("CPU").ok());
  EXPECT_FALSE(parse_cp_attention(" tree").ok());
  EXPECT_FALSE(parse_precision("").ok());
}

}  // namespace
}  // namespace grove
