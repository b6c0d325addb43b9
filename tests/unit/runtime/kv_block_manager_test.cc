#include "engine/runtime/kv_block_manager.h"

#include <cstdint>
#include <map>
#include <random>
#include <set>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace moe {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

KvBlockManager Make(int64_t num_blocks, int64_t block_size, int64_t max_blocks_per_seq) {
  absl::StatusOr<KvBlockManager> m =
      KvBlockManager::Create(num_blocks, block_size, max_blocks_per_seq);
  EXPECT_TRUE(m.ok()) << m.status();
  return std::move(m).value();
}

std::vector<int32_t> Blocks(const KvBlockManager& m, int64_t seq_id) {
  absl::StatusOr<std::vector<int32_t>> blocks = m.BlocksOf(seq_id);
  EXPECT_TRUE(blocks.ok()) << blocks.status();
  return blocks.ok() ? *blocks : std::vector<int32_t>();
}

TEST(KvBlockManagerCreateTest, RejectsBadGeometryNamingTheField) {
  struct Case {
    int64_t num_blocks, block_size, max_blocks_per_seq;
    const char* message;
  };
  for (const Case& c : {
           Case{0, 16, 4, "kv_cache: num_blocks=0 must be >= 1"},
           Case{-1, 16, 4, "kv_cache: num_blocks=-1 must be >= 1"},
           Case{8, 0, 4, "kv_cache: block_size=0 must be >= 1"},
           Case{8, 16, 0, "kv_cache: max_blocks_per_seq=0 must be >= 1"},
       }) {
    absl::StatusOr<KvBlockManager> m =
        KvBlockManager::Create(c.num_blocks, c.block_size, c.max_blocks_per_seq);
    EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(m.status().message(), c.message);
  }
  EXPECT_TRUE(KvBlockManager::Create(1, 1, 1).ok());
}

TEST(KvBlockManagerCreateTest, SlotCountMustFitInt32AtTheExactLimit) {
  // Slots: limit (2^31 - 1), limit - 1, limit + 1; few blocks so nothing large is allocated.
  EXPECT_TRUE(KvBlockManager::Create(1, 2147483647, 1).ok());
  EXPECT_TRUE(KvBlockManager::Create(2, 1073741823, 1).ok());
  absl::StatusOr<KvBlockManager> m = KvBlockManager::Create(2, 1073741824, 1);
  EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(m.status().message(),
            "kv_cache: num_blocks=2 * block_size=1073741824 exceeds 2147483647 slots (slot ids are "
            "int32)");
}

TEST(KvBlockManagerTest, ExactAccountingAcrossAddReserveFree) {
  KvBlockManager m = Make(10, 4, 8);
  EXPECT_EQ(m.blocks_used(), 0);
  EXPECT_EQ(m.blocks_free(), 10);

  ASSERT_TRUE(m.AddSequence(1).ok());
  EXPECT_EQ(m.blocks_used(), 0);  // adding takes no block
  ASSERT_TRUE(m.Reserve(1, 1).ok());
  EXPECT_EQ(m.blocks_used(), 1);
  ASSERT_TRUE(m.Reserve(1, 4).ok());  // still one block
  EXPECT_EQ(m.blocks_used(), 1);
  ASSERT_TRUE(m.Reserve(1, 5).ok());
  EXPECT_EQ(m.blocks_used(), 2);
  ASSERT_TRUE(m.Reserve(1, 3).ok());  // shrinking is a no-op
  EXPECT_EQ(*m.ReservedTokens(1), 5);
  EXPECT_EQ(m.blocks_used(), 2);

  ASSERT_TRUE(m.AddSequence(2).ok());
  ASSERT_TRUE(m.Reserve(2, 12).ok());
  EXPECT_EQ(m.blocks_used(), 5);
  EXPECT_EQ(m.blocks_free(), 5);
  EXPECT_THAT(Blocks(m, 1), ElementsAre(0, 1));
  EXPECT_THAT(Blocks(m, 2), ElementsAre(2, 3, 4));

  ASSERT_TRUE(m.Free(1).ok());
  EXPECT_EQ(m.blocks_used(), 3);
  EXPECT_EQ(m.blocks_free(), 7);
  EXPECT_FALSE(m.Contains(1));
  ASSERT_TRUE(m.Free(2).ok());
  EXPECT_EQ(m.blocks_used(), 0);
  EXPECT_EQ(m.num_sequences(), 0);
}

TEST(KvBlockManagerTest, FreedBlocksAreReusedLowestFirst) {
  KvBlockManager m = Make(8, 2, 8);
  for (int64_t s = 0; s < 4; ++s) {
    ASSERT_TRUE(m.AddSequence(s).ok());
    ASSERT_TRUE(m.Reserve(s, 4).ok());  // two blocks each: s owns {2s, 2s + 1}
  }
  EXPECT_EQ(m.blocks_free(), 0);
  ASSERT_TRUE(m.Free(2).ok());  // frees 4, 5
  ASSERT_TRUE(m.Free(0).ok());  // frees 0, 1
  ASSERT_TRUE(m.AddSequence(9).ok());
  ASSERT_TRUE(m.Reserve(9, 3).ok());
  EXPECT_THAT(Blocks(m, 9), ElementsAre(0, 1));
  ASSERT_TRUE(m.Reserve(9, 5).ok());
  EXPECT_THAT(Blocks(m, 9), ElementsAre(0, 1, 4));
  ASSERT_TRUE(m.AddSequence(10).ok());
  ASSERT_TRUE(m.Reserve(10, 1).ok());
  EXPECT_THAT(Blocks(m, 10), ElementsAre(5));
}

TEST(KvBlockManagerTest, CanEverFitAtTheLimit) {
  // Limit: min(num_blocks=6, max_blocks_per_seq=4) = 4 blocks = 16 tokens.
  KvBlockManager m = Make(6, 4, 4);
  EXPECT_TRUE(m.CanEverFit(0));
  EXPECT_TRUE(m.CanEverFit(15));
  EXPECT_TRUE(m.CanEverFit(16));
  EXPECT_FALSE(m.CanEverFit(17));
  // Limited by num_blocks instead: 3 blocks = 12 tokens.
  KvBlockManager n = Make(3, 4, 100);
  EXPECT_TRUE(n.CanEverFit(11));
  EXPECT_TRUE(n.CanEverFit(12));
  EXPECT_FALSE(n.CanEverFit(13));
}

TEST(KvBlockManagerTest, ReserveAtTheLimitWithAnEmptyCache) {
  KvBlockManager m = Make(6, 4, 4);  // limit 16 tokens
  ASSERT_TRUE(m.AddSequence(1).ok());
  absl::Status s = m.Reserve(1, 17);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(),
            "kv_cache: sequence 1 can never fit: 17 tokens need 5 blocks of block_size=4, limit "
            "is 4 blocks (num_blocks=6, max_blocks_per_seq=4)");
  EXPECT_EQ(m.blocks_used(), 0);  // nothing changed
  EXPECT_EQ(*m.ReservedTokens(1), 0);
  ASSERT_TRUE(m.Reserve(1, 15).ok());
  ASSERT_TRUE(m.Reserve(1, 16).ok());  // exactly fills the per-sequence budget
  EXPECT_EQ(m.blocks_used(), 4);
  EXPECT_EQ(m.Reserve(1, 17).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(m.blocks_used(), 4);
  EXPECT_EQ(*m.ReservedTokens(1), 16);
}

TEST(KvBlockManagerTest, NotNowVersusNeverDependsOnWhatIsOccupied) {
  KvBlockManager m = Make(6, 4, 6);  // limit 6 blocks = 24 tokens
  ASSERT_TRUE(m.AddSequence(1).ok());
  ASSERT_TRUE(m.Reserve(1, 8).ok());  // blocks 0, 1; 4 free = 16 tokens
  ASSERT_TRUE(m.AddSequence(2).ok());

  // 17 tokens could fit in an empty cache but not now: the caller waits.
  absl::Status s = m.Reserve(2, 17);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(s.message(), "kv_cache: sequence 2 needs 5 more blocks for 17 tokens, 4 free now");
  EXPECT_EQ(m.blocks_used(), 2);
  EXPECT_EQ(*m.ReservedTokens(2), 0);
  // 25 tokens can never fit, whatever is occupied.
  EXPECT_EQ(m.Reserve(2, 25).code(), absl::StatusCode::kInvalidArgument);
  // Exactly the free blocks: accepted, cache full.
  ASSERT_TRUE(m.Reserve(2, 16).ok());
  EXPECT_EQ(m.blocks_free(), 0);
  // Growing into the next block of a full cache: not now.
  EXPECT_EQ(m.Reserve(1, 9).code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(*m.ReservedTokens(1), 8);
  // Once the other finishes, the same request succeeds.
  ASSERT_TRUE(m.Free(2).ok());
  ASSERT_TRUE(m.Reserve(1, 24).ok());
  EXPECT_THAT(Blocks(m, 1), ElementsAre(0, 1, 2, 3, 4, 5));
}

TEST(KvBlockManagerTest, UnknownAndDuplicateIds) {
  KvBlockManager m = Make(4, 4, 4);
  ASSERT_TRUE(m.AddSequence(7).ok());
  absl::Status dup = m.AddSequence(7);
  EXPECT_EQ(dup.code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(dup.message(), "kv_cache: sequence 7 is already tracked");
  EXPECT_EQ(m.Reserve(8, 1).code(), absl::StatusCode::kNotFound);
  // NotFound wins over never-fits.
  EXPECT_EQ(m.Reserve(8, 1000).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(m.Free(8).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(m.SlotFor(8, 0).status().code(), absl::StatusCode::kNotFound);
  int32_t buf[4];
  EXPECT_EQ(m.FillSlotMapping(8, 0, 1, buf).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(m.FillBlockTableRow(8, buf, 4).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(m.ReservedTokens(8).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(m.Free(8).message(), "kv_cache: unknown sequence 8");
  // A freed id is unknown and can be added again.
  ASSERT_TRUE(m.Free(7).ok());
  EXPECT_EQ(m.Free(7).code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(m.AddSequence(7).ok());
  EXPECT_EQ(m.Reserve(7, -1).code(), absl::StatusCode::kInvalidArgument);
}

TEST(KvBlockManagerTest, SlotMappingAndBlockTableSpanSeveralBlocks) {
  KvBlockManager m = Make(8, 4, 5);
  ASSERT_TRUE(m.AddSequence(1).ok());
  ASSERT_TRUE(m.Reserve(1, 2).ok());  // block 0
  ASSERT_TRUE(m.AddSequence(2).ok());
  ASSERT_TRUE(m.Reserve(2, 5).ok());   // blocks 1, 2
  ASSERT_TRUE(m.Reserve(1, 10).ok());  // blocks 0, 3, 4: not contiguous
  ASSERT_THAT(Blocks(m, 1), ElementsAre(0, 3, 4));

  // slot = block * block_size + position % block_size.
  EXPECT_EQ(*m.SlotFor(1, 0), 0);
  EXPECT_EQ(*m.SlotFor(1, 3), 3);
  EXPECT_EQ(*m.SlotFor(1, 4), 12);
  EXPECT_EQ(*m.SlotFor(1, 7), 15);
  EXPECT_EQ(*m.SlotFor(1, 8), 16);
  EXPECT_EQ(*m.SlotFor(1, 9), 17);
  EXPECT_EQ(m.SlotFor(1, 10).status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(m.SlotFor(1, -1).status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(m.SlotFor(1, 10).status().message(),
            "kv_cache: sequence 1: position=10 outside the 10 reserved tokens");

  std::vector<int32_t> slots(10, -7);
  ASSERT_TRUE(m.FillSlotMapping(1, 0, 10, slots.data()).ok());
  EXPECT_THAT(slots, ElementsAre(0, 1, 2, 3, 12, 13, 14, 15, 16, 17));
  std::vector<int32_t> chunk(3, -7);
  ASSERT_TRUE(m.FillSlotMapping(1, 3, 3, chunk.data()).ok());  // a prefill chunk across blocks
  EXPECT_THAT(chunk, ElementsAre(3, 12, 13));
  ASSERT_TRUE(m.FillSlotMapping(2, 4, 1, chunk.data()).ok());  // one decode token
  EXPECT_EQ(chunk[0], 8);
  // Range limits: start + count == reserved is fine, one more is not; nothing written.
  std::vector<int32_t> guard(2, -7);
  ASSERT_TRUE(m.FillSlotMapping(1, 8, 2, guard.data()).ok());
  EXPECT_THAT(guard, ElementsAre(16, 17));
  guard.assign(2, -7);
  EXPECT_EQ(m.FillSlotMapping(1, 9, 2, guard.data()).code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(m.FillSlotMapping(1, -1, 1, guard.data()).code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(m.FillSlotMapping(1, 0, -1, guard.data()).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(m.FillSlotMapping(1, 0, 1, nullptr).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(guard, ElementsAre(-7, -7));
  EXPECT_TRUE(m.FillSlotMapping(1, 10, 0, nullptr).ok());

  // Block tables: one row per sequence, [num_seqs, max_blocks_per_seq], -1 unused.
  std::vector<int32_t> table(2 * 5, -7);
  ASSERT_TRUE(m.FillBlockTableRow(1, table.data(), 5).ok());
  ASSERT_TRUE(m.FillBlockTableRow(2, table.data() + 5, 5).ok());
  EXPECT_THAT(table, ElementsAre(0, 3, 4, -1, -1, 1, 2, -1, -1, -1));
  // Exactly the blocks held fits; one fewer does not.
  std::vector<int32_t> row(3, -7);
  ASSERT_TRUE(m.FillBlockTableRow(1, row.data(), 3).ok());
  EXPECT_THAT(row, ElementsAre(0, 3, 4));
  absl::Status small = m.FillBlockTableRow(1, row.data(), 2);
  EXPECT_EQ(small.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(small.message(), "kv_cache: sequence 1 holds 3 blocks, max_blocks=2 is too small");
  EXPECT_EQ(m.FillBlockTableRow(1, nullptr, 5).code(), absl::StatusCode::kInvalidArgument);

  // The position -> slot rule of AttentionArgs agrees with SlotFor.
  for (int64_t p = 0; p < 10; ++p) {
    EXPECT_EQ(table[p / 4] * 4 + p % 4, *m.SlotFor(1, p)) << p;
  }
}

void CheckInvariants(const KvBlockManager& m, const std::map<int64_t, int64_t>& tokens) {
  std::set<int32_t> owned;
  int64_t held = 0;
  for (const auto& [seq_id, n] : tokens) {
    std::vector<int32_t> blocks = Blocks(m, seq_id);
    ASSERT_EQ(static_cast<int64_t>(blocks.size()), m.BlocksForTokens(n)) << seq_id;
    ASSERT_EQ(*m.ReservedTokens(seq_id), n);
    for (int32_t b : blocks) {
      ASSERT_GE(b, 0);
      ASSERT_LT(b, m.num_blocks());
      ASSERT_TRUE(owned.insert(b).second) << "block " << b << " owned twice";
    }
    held += static_cast<int64_t>(blocks.size());
  }
  ASSERT_EQ(m.blocks_used(), held);
  ASSERT_EQ(m.blocks_used() + m.blocks_free(), m.num_blocks());
  ASSERT_EQ(m.num_sequences(), static_cast<int64_t>(tokens.size()));
}

// Runs a seeded random workload; returns every slot handed out, to check reproducibility.
std::vector<int32_t> RunStress(uint32_t seed) {
  constexpr int64_t kBlocks = 64, kBlockSize = 8, kMaxPerSeq = 20;
  KvBlockManager m = Make(kBlocks, kBlockSize, kMaxPerSeq);
  std::mt19937 rng(seed);
  std::map<int64_t, int64_t> tokens;  // the model: seq id -> reserved tokens
  std::vector<int32_t> trace;
  int64_t next_id = 0;
  int64_t never = 0, not_now = 0, granted = 0;
  for (int step = 0; step < 5000; ++step) {
    const int op = static_cast<int>(rng() % 10);
    if (op < 3 || tokens.empty()) {
      const int64_t id = next_id++;
      EXPECT_TRUE(m.AddSequence(id).ok());
      tokens[id] = 0;
    } else if (op < 8) {
      auto it = tokens.begin();
      std::advance(it, rng() % tokens.size());
      // Mostly small growth (decode, chunks); now and then past the 160-token limit.
      const int64_t want = it->second + static_cast<int64_t>(rng() % (op == 7 ? 200 : 40));
      const int64_t before_used = m.blocks_used();
      const int64_t missing = m.BlocksForTokens(want) - m.BlocksForTokens(it->second);
      absl::Status s = m.Reserve(it->first, want);
      if (!m.CanEverFit(want)) {
        EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
        EXPECT_EQ(m.blocks_used(), before_used);
        ++never;
      } else if (missing > kBlocks - before_used) {
        EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
        EXPECT_EQ(m.blocks_used(), before_used);
        ++not_now;
      } else {
        EXPECT_TRUE(s.ok()) << s;
        ++granted;
        it->second = std::max(it->second, want);
        EXPECT_EQ(m.blocks_used(), before_used + missing);
        if (it->second > 0) trace.push_back(*m.SlotFor(it->first, it->second - 1));
      }
    } else {
      auto it = tokens.begin();
      std::advance(it, rng() % tokens.size());
      EXPECT_TRUE(m.Free(it->first).ok());
      tokens.erase(it);
    }
    CheckInvariants(m, tokens);
    if (::testing::Test::HasFatalFailure()) return trace;
  }
  // The workload reaches every outcome of Reserve.
  EXPECT_GT(never, 0);
  EXPECT_GT(not_now, 0);
  EXPECT_GT(granted, 0);
  for (const auto& [seq_id, n] : tokens) EXPECT_TRUE(m.Free(seq_id).ok());
  EXPECT_EQ(m.blocks_used(), 0);
  EXPECT_EQ(m.blocks_free(), kBlocks);
  EXPECT_EQ(m.num_sequences(), 0);
  return trace;
}

TEST(KvBlockManagerStressTest, RandomAddGrowFreeKeepsInvariants) {
  for (uint32_t seed : {1u, 2u, 3u}) {
    SCOPED_TRACE(seed);
    RunStress(seed);
  }
}

TEST(KvBlockManagerStressTest, SameCallsGiveSameSlots) {
  std::vector<int32_t> a = RunStress(42);
  std::vector<int32_t> b = RunStress(42);
  EXPECT_FALSE(a.empty());
  EXPECT_EQ(a, b);
}

// Partitions (expert parallelism): sequence s takes blocks only from pool s % 3, pool p being
// ids [4p, 4p + 4); a full pool refuses its sequences while the others still have room, and a
// freed block goes back to its own pool.
TEST(KvBlockManagerPartitionTest, EachSequenceTakesFromItsOwnPool) {
  absl::StatusOr<KvBlockManager> made = KvBlockManager::Create(
      12, 2, 8, KvPartitions{3, [](int64_t seq) { return static_cast<int>(seq % 3); }});
  ASSERT_TRUE(made.ok()) << made.status();
  KvBlockManager& m = *made;
  EXPECT_EQ(m.blocks_per_partition(), 4);
  EXPECT_EQ(m.max_blocks_for_one_seq(), 4);
  EXPECT_FALSE(m.CanEverFit(9));  // 5 blocks: more than one pool
  for (int64_t seq : {0, 1, 2, 3, 4}) ASSERT_TRUE(m.AddSequence(seq).ok());
  ASSERT_TRUE(m.Reserve(1, 5).ok());  // 3 blocks of pool 1
  EXPECT_THAT(Blocks(m, 1), ElementsAre(4, 5, 6));
  ASSERT_TRUE(m.Reserve(2, 1).ok());
  EXPECT_THAT(Blocks(m, 2), ElementsAre(8));
  ASSERT_TRUE(m.Reserve(0, 2).ok());
  EXPECT_THAT(Blocks(m, 0), ElementsAre(0));
  // Sequence 4 is in pool 1, which has one block left; pools 0 and 2 have seven.
  const absl::Status full = m.Reserve(4, 4);
  EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(full.message(), HasSubstr("1 free now in its partition 1"));
  EXPECT_EQ(m.blocks_free(), 7);
  ASSERT_TRUE(m.Free(1).ok());
  ASSERT_TRUE(m.Reserve(4, 8).ok());
  EXPECT_THAT(Blocks(m, 4), ElementsAre(4, 5, 6, 7));
  ASSERT_TRUE(m.Reserve(3, 1).ok());  // pool 0 again
  EXPECT_THAT(Blocks(m, 3), ElementsAre(1));
}

TEST(KvBlockManagerPartitionTest, RejectsBadPartitions) {
  const auto of = [](int64_t) { return 0; };
  EXPECT_EQ(KvBlockManager::Create(10, 2, 4, KvPartitions{3, of}).status().message(),
            "kv_cache: partitions=3 must be >= 1 and divide num_blocks=10");
  EXPECT_EQ(KvBlockManager::Create(10, 2, 4, KvPartitions{0, of}).status().message(),
            "kv_cache: partitions=0 must be >= 1 and divide num_blocks=10");
  EXPECT_EQ(KvBlockManager::Create(10, 2, 4, KvPartitions{2, nullptr}).status().message(),
            "kv_cache: partitions=2 without a partition function");
}

}  // namespace
}  // namespace moe
