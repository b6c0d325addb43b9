// moe_generate's progress line and summary: exact text for typical counts and at the edges
// (nothing submitted, no time passed, more done than submitted, minute and hour boundaries).
#include "tools/progress_bar.h"

#include "gtest/gtest.h"

namespace moe::tools {
namespace {

TEST(ProgressBarTest, FormatsElapsed) {
  EXPECT_EQ(FormatElapsed(0), "0:00.0");
  EXPECT_EQ(FormatElapsed(-3), "0:00.0");
  EXPECT_EQ(FormatElapsed(4.94), "0:04.9");
  EXPECT_EQ(FormatElapsed(59.94), "0:59.9");
  EXPECT_EQ(FormatElapsed(59.96), "1:00.0");  // rounds into the next minute, never "0:60.0"
  EXPECT_EQ(FormatElapsed(61.2), "1:01.2");
  EXPECT_EQ(FormatElapsed(3599.94), "59:59.9");
  EXPECT_EQ(FormatElapsed(3599.96), "1:00:00");
  EXPECT_EQ(FormatElapsed(3723), "1:02:03");
  EXPECT_EQ(FormatElapsed(100 * 3600.0 + 1), "100:00:01");
}

TEST(ProgressBarTest, RendersLine) {
  EXPECT_EQ(RenderProgressLine({12, 40, 1534}, 4.9),
            "[#######.................]  12/40 requests  1534 tokens  313.1 tok/s  0:04.9");
  EXPECT_EQ(RenderProgressLine({40, 40, 8000}, 10),
            "[########################]  40/40 requests  8000 tokens  800.0 tok/s  0:10.0");
  EXPECT_EQ(RenderProgressLine({0, 3, 0}, 0.05),
            "[........................]  0/3 requests  0 tokens  0.0 tok/s  0:00.1");
}

TEST(ProgressBarTest, BarWidthAndRounding) {
  EXPECT_EQ(RenderProgressLine({5, 10, 0}, 1, 10).substr(0, 12), "[#####.....]");
  // A bar cell fills only when its whole share is done.
  EXPECT_EQ(RenderProgressLine({9, 10, 0}, 1, 4).substr(0, 6), "[###.]");
  EXPECT_EQ(RenderProgressLine({1, 3, 0}, 1, 1).substr(0, 3), "[.]");
  EXPECT_EQ(RenderProgressLine({1, 1, 0}, 1, 0).substr(0, 3), "[#]");  // width at least 1
}

TEST(ProgressBarTest, EdgesDoNotDivideByZeroOrOverflowTheBar) {
  EXPECT_EQ(RenderProgressLine({0, 0, 0}, 0),
            "[........................]  0/0 requests  0 tokens  0.0 tok/s  0:00.0");
  EXPECT_EQ(RenderProgressLine({7, 5, 10}, 0, 5),
            "[#####]  5/5 requests  10 tokens  0.0 tok/s  0:00.0");
  EXPECT_EQ(RenderProgressLine({-1, 5, 0}, 2, 5),
            "[.....]  0/5 requests  0 tokens  0.0 tok/s  0:02.0");
}

TEST(ProgressBarTest, RendersLoadLine) {
  EXPECT_EQ(RenderLoadLine(3, 12, 4.93, 12), "loading [###.........]  3/12 steps  0:04.9");
  EXPECT_EQ(RenderLoadLine(20, 12, 0, 4), "loading [####]  12/12 steps  0:00.0");
  EXPECT_EQ(RenderLoadLine(1, 0, 0, 4), "loading [....]  0/0 steps  0:00.0");
}

TEST(ProgressBarTest, RendersSummary) {
  ThroughputTotals t;
  t.requests = 40;
  t.failed = 1;
  t.prompt_tokens = 1234;
  t.generated_tokens = 5678;
  t.wall_s = 12.31;
  EXPECT_EQ(RenderSummary(t),
            "requests 40 (1 failed), prompt tokens 1234, generated tokens 5678, wall 12.31 s\n"
            "throughput: prefill+decode 561.5 tok/s, generated 461.3 tok/s\n");
  EXPECT_EQ(RenderSummary(ThroughputTotals{}),
            "requests 0 (0 failed), prompt tokens 0, generated tokens 0, wall 0.00 s\n"
            "throughput: prefill+decode 0.0 tok/s, generated 0.0 tok/s\n");
}

}  // namespace
}  // namespace moe::tools
