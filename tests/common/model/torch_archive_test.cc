// Tests of common/model/torch_archive.h: the restricted unpickler's bounds (nesting depth, value count, expanded
// size, materialized bytes), cycles, the zip directory check that runs before any record is read, files written by
// Python's torch.save (Debian's python3-torch), and the writer.
#include "common/model/torch_archive.h"

#include <caffe2/serialize/inline_container.h>
#include <sys/resource.h>
#include <torch/torch.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/io/file_util.h"
#include "common/model/state_dict.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/common/model/archive_bytes.h"
#include "tests/testing/temp_dir.h"

namespace fedtune::model {
namespace {

using ::testing::HasSubstr;
using namespace std::string_literals;

// `n` bytes of `v`, little-endian.
std::string Le(uint64_t v, int n) {
  std::string out;
  for (int k = 0; k < n; ++k) out += static_cast<char>((v >> (8 * k)) & 0xff);
  return out;
}

// Pickle snippets (protocol 2).
std::string Str(const std::string& s) { return "X" + Le(s.size(), 4) + s; }
std::string BinInt(int64_t i) { return "J" + Le(static_cast<uint64_t>(i), 4); }

using testing::Archive;  // tests/common/model/archive_bytes.h

// The process's current virtual memory size (VmSize in /proc/self/status).
uint64_t VirtualMemoryBytes() {
  auto status = io::ReadFile("/proc/self/status");
  CHECK(status.ok()) << status.status();
  const size_t at = status->find("VmSize:");
  CHECK_NE(at, std::string::npos);
  return std::strtoull(status->c_str() + at + 7, nullptr, 10) * 1024;
}

std::string Message(const absl::StatusOr<PickleValuePtr>& result) { return std::string(result.status().message()); }

// ---------------------------------------------------------------------------------------------------------------
// A minimal zip writer whose central directory can lie, for the record-size checks.

uint32_t Crc32(const std::string& bytes) {
  uint32_t crc = 0xffffffffu;
  for (unsigned char c : bytes) {
    crc ^= c;
    for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0xedb88320u & (0u - (crc & 1u)));
  }
  return ~crc;
}

struct ZipEntry {
  std::string name;
  std::string data;  // Bytes after the local header.
  uint16_t method = 0;
  std::optional<uint64_t> claimed_size;          // Both sizes in the central directory (default: data.size()).
  std::optional<uint64_t> claimed_uncompressed;  // Only the uncompressed size.
  bool zip64_extra = false;                      // Sizes and offset as 0xFFFFFFFF plus a zip64 extended field.
  std::optional<uint64_t> local_offset;          // The central directory's offset of the local header.
  uint32_t external_attributes = 0;              // 0x10: an MS-DOS directory.
};

std::string BuildZip(const std::vector<ZipEntry>& entries, bool zip64_end = true) {
  std::string out, directory;
  for (const ZipEntry& e : entries) {
    const uint64_t offset = out.size();
    const uint32_t crc = Crc32(e.data);
    out += Le(0x04034b50, 4) + Le(20, 2) + Le(0, 2) + Le(e.method, 2) + Le(0, 4) + Le(crc, 4) + Le(e.data.size(), 4) +
           Le(e.data.size(), 4) + Le(e.name.size(), 2) + Le(0, 2) + e.name + e.data;
    const uint64_t comp = e.claimed_size.value_or(e.data.size());
    const uint64_t uncomp = e.claimed_uncompressed.value_or(comp);
    const uint64_t local = e.local_offset.value_or(offset);
    std::string extra;
    if (e.zip64_extra) extra = Le(1, 2) + Le(24, 2) + Le(uncomp, 8) + Le(comp, 8) + Le(local, 8);
    const uint64_t max32 = 0xffffffffu;
    directory += Le(0x02014b50, 4) + Le(45, 2) + Le(45, 2) + Le(0, 2) + Le(e.method, 2) + Le(0, 4) + Le(crc, 4) +
                 Le(e.zip64_extra ? max32 : comp, 4) + Le(e.zip64_extra ? max32 : uncomp, 4) + Le(e.name.size(), 2) +
                 Le(extra.size(), 2) + Le(0, 2) + Le(0, 2) + Le(0, 2) + Le(e.external_attributes, 4) +
                 Le(e.zip64_extra ? max32 : local, 4) + e.name + extra;
  }
  const uint64_t cd_offset = out.size();
  out += directory;
  if (zip64_end) {
    const uint64_t zip64_offset = out.size();
    out += Le(0x06064b50, 4) + Le(44, 8) + Le(45, 2) + Le(45, 2) + Le(0, 4) + Le(0, 4) + Le(entries.size(), 8) +
           Le(entries.size(), 8) + Le(directory.size(), 8) + Le(cd_offset, 8);
    out += Le(0x07064b50, 4) + Le(0, 4) + Le(zip64_offset, 8) + Le(1, 4);
  }
  out += Le(0x06054b50, 4) + Le(0, 2) + Le(0, 2) + Le(entries.size(), 2) + Le(entries.size(), 2) +
         Le(directory.size(), 4) + Le(cd_offset, 4) + Le(0, 2);
  return out;
}

// {"w": tensor of `numel` floats on storage "0"} as a pickle.
std::string OneTensorPickle(int64_t numel) {
  return "\x80\x02}("s + Str("w") + "ctorch._utils\n_rebuild_tensor_v2\n((" + Str("storage") +
         "ctorch\nFloatStorage\n" + Str("0") + Str("cpu") + BinInt(numel) + "tQ" + BinInt(0) + "(" + BinInt(numel) +
         "t(K\x01t\x89" + "ccollections\nOrderedDict\n)RtRu.";
}

// The archive BuildZip writes for OneTensorPickle with a valid storage record, with `edit` applied to the storage
// entry.
std::string OneTensorZip(int64_t numel, const std::function<void(ZipEntry&)>& edit = nullptr) {
  std::vector<ZipEntry> entries = {{"a/data.pkl", OneTensorPickle(numel)},
                                   {"a/version", "3"},
                                   {"a/data/0", std::string(static_cast<size_t>(numel) * 4, '\x01')}};
  if (edit) edit(entries[2]);
  return BuildZip(entries);
}

// ---------------------------------------------------------------------------------------------------------------
// Nesting, cycles, shared sub-graphs, counts.

// 400,000 nested lists built through the memo without growing the stack: each new list gets the previous one, then
// goes into an outer list. A recursive destructor overflows the thread's stack on this.
TEST(TorchArchiveTest, DeeplyNestedPickleIsRefused) {
  std::string pickle = "\x80\x02]]q\x00"s + "a";
  for (int i = 0; i < 400000; ++i) pickle += "]h\x00"s + "aq\x00"s + "a";
  pickle += ".";
  const int64_t live = PickleValueLiveCount();
  auto result = ReadTorchArchive(Archive(pickle), "deep.pt");
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(result), HasSubstr("deep.pt"));
  EXPECT_THAT(Message(result), HasSubstr(absl::StrCat("nested more than ", kMaxPickleDepth, " levels")));
  EXPECT_EQ(PickleValueLiveCount(), live);
  // The same through the stack (60,000 open lists closed by APPENDs) and through the state-dict import.
  std::string stacked = "\x80\x02" + std::string(60000, ']') + std::string(59999, 'a') + ".";
  EXPECT_THAT(ParseTorchStateDict(Archive(stacked), "stacked.pt").status().message(),
              HasSubstr(absl::StrCat("nested more than ", kMaxPickleDepth, " levels")));
  EXPECT_EQ(PickleValueLiveCount(), live);
}

TEST(TorchArchiveTest, NestingUpToTheBoundLoads) {
  std::string pickle = "\x80\x02" + std::string(kMaxPickleDepth, ']') + std::string(kMaxPickleDepth - 1, 'a') + ".";
  auto result = ReadTorchArchive(Archive(pickle), "ok.pt");
  ASSERT_TRUE(result.ok()) << result.status();
  int depth = 0;
  for (const PickleValue* v = result->get(); v != nullptr; v = v->items.empty() ? nullptr : v->items[0].get()) {
    ++depth;
  }
  EXPECT_EQ(depth, kMaxPickleDepth);
  pickle = "\x80\x02" + std::string(kMaxPickleDepth + 1, ']') + std::string(kMaxPickleDepth, 'a') + ".";
  EXPECT_THAT(Message(ReadTorchArchive(Archive(pickle), "deep.pt")), HasSubstr("nested more than"));
}

// A list appended to itself (through the memo) is a reference cycle: refused, and freed (no leak).
TEST(TorchArchiveTest, SelfReferencingListIsRefusedAndFreed) {
  const int64_t live = PickleValueLiveCount();
  auto result = ReadTorchArchive(Archive("\x80\x02]q\x00h\x00"s + "a."), "cycle.pt");
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(result), HasSubstr("cycle.pt"));
  EXPECT_THAT(Message(result), HasSubstr("contains itself"));
  EXPECT_EQ(PickleValueLiveCount(), live);
  // A cycle through a dict and a tuple, then an error before STOP: freed as well.
  result = ReadTorchArchive(Archive("\x80\x02}q\x00(X\x01\x00\x00\x00k(h\x00tu"s), "cycle2.pt");
  EXPECT_THAT(Message(result), HasSubstr("without STOP"));
  EXPECT_EQ(PickleValueLiveCount(), live);
  // Sharing without a cycle is fine: [x, x] where x = [].
  result = ReadTorchArchive(Archive("\x80\x02](]q\x01h\x01"s + "e."), "shared.pt");
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ((*result)->items[0], (*result)->items[1]);
  result = absl::StatusOr<PickleValuePtr>();
  EXPECT_EQ(PickleValueLiveCount(), live);
}

// L(k+1) = [L(k), L(k)] for 64 levels: 130 values whose expansion has 2^65. A consumer that walks it as a tree
// (the writer, a printer) would never finish.
TEST(TorchArchiveTest, SharedSubgraphBombIsRefusedFast) {
  std::string pickle = "\x80\x02(]q\x00"s;
  for (int i = 0; i < 64; ++i) pickle += "](h\x00h\x00"s + "eq\x00"s;
  pickle += "t.";
  const absl::Time start = absl::Now();
  auto result = ReadTorchArchive(Archive(pickle), "dag.pt");
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(result), HasSubstr("dag.pt"));
  EXPECT_THAT(Message(result), HasSubstr(absl::StrCat("more than ", kMaxPickleExpandedValues, " values")));
}

TEST(TorchArchiveTest, ValueCountIsBounded) {
  // A list of kMaxPickleValues Nones, appended 1,000 at a time.
  std::string pickle = "\x80\x02]";
  for (int64_t n = 0; n <= kMaxPickleValues; n += 1000) pickle += "(" + std::string(1000, 'N') + "e";
  pickle += ".";
  auto result = ReadTorchArchive(Archive(pickle), "many.pt");
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(result), HasSubstr("many.pt"));
  EXPECT_THAT(Message(result), HasSubstr(absl::StrCat("more than ", kMaxPickleValues, " values")));
}

// One real storage of 1 MiB rebuilt as a tensor again and again (each rebuild is a copy): refused by the bound on
// materialized bytes, long before the process runs out of memory. Three rebuilds (a shared storage) load.
TEST(TorchArchiveTest, RepeatedRebuildsOfOneStorageAreBounded) {
  constexpr int64_t kNumel = 1 << 18;  // 1 MiB of floats.
  auto pickle = [&](int rebuilds) {
    std::string p = "\x80\x02](ctorch._utils\n_rebuild_tensor_v2\nq\x01((" + Str("storage") + "ctorch\nFloatStorage\n" +
                    Str("0") + Str("cpu") + BinInt(kNumel) + "tQq\x02" + BinInt(0) + "(" + BinInt(kNumel) +
                    "t(K\x01t\x89" + "ccollections\nOrderedDict\nq\x03)RtR";
    for (int i = 1; i < rebuilds; ++i) {
      p += "h\x01(h\x02"s + BinInt(0) + "(" + BinInt(kNumel) + "t(K\x01t\x89h\x03)RtR";
    }
    return p + "e.";
  };
  const std::map<std::string, std::string> records = {{"data/0", std::string(kNumel * 4, '\0')}};
  auto ok = ReadTorchArchive(Archive(pickle(3), records), "shared.pt");
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ((*ok)->items.size(), 3u);
  // The first rebuild is the storage itself (no copy), the others are copies: tensors never share memory.
  std::set<const void*> buffers;
  for (const auto& item : (*ok)->items) buffers.insert(item->tensor.data_ptr());
  EXPECT_EQ(buffers.size(), 3u);

  const absl::Time start = absl::Now();
  auto result = ReadTorchArchive(Archive(pickle(100), records), "rebuilds.pt");
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(result), HasSubstr("rebuilds.pt"));
  EXPECT_THAT(Message(result), HasSubstr("kMaterializedBytesPerArchiveByte"));
}

// A storage whose element count times its element size overflows 64 bits is refused before anything is allocated.
TEST(TorchArchiveTest, StorageSizeOverflowIsRefused) {
  const std::string pickle = "\x80\x02"s + "ctorch._utils\n_rebuild_tensor_v2\n((" + Str("storage") +
                             "ctorch\nDoubleStorage\n" + Str("0") + Str("cpu") + "\x8a\x08" + Le(uint64_t{1} << 61, 8) +
                             "tQ" + BinInt(0) + "(K\x01t(K\x01t\x89" + "ccollections\nOrderedDict\n)RtR.";
  auto result = ReadTorchArchive(Archive(pickle, {{"data/0", std::string(8, '\0')}}), "overflow.pt");
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(result), HasSubstr("record 'data/0' has 8 bytes"));
}

// ---------------------------------------------------------------------------------------------------------------
// The zip directory, checked before any record is read.

TEST(TorchArchiveTest, HonestHandWrittenZipLoads) {
  for (bool zip64_extra : {false, true}) {
    auto sd = ParseTorchStateDict(OneTensorZip(3, [&](ZipEntry& e) { e.zip64_extra = zip64_extra; }), "hand.pt");
    ASSERT_TRUE(sd.ok()) << sd.status();
    EXPECT_EQ(sd->at("w").numel(), 3);
  }
}

// A record that claims far more bytes than the archive holds is refused from the directory, before the reader
// allocates its claimed size. The child process runs with a small address-space limit to show that nothing big is
// allocated.
TEST(TorchArchiveTest, RecordClaimingAHugeSizeIsRefusedWithoutAllocating) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  const std::string huge = OneTensorZip(3, [](ZipEntry& e) {
    e.zip64_extra = true;  // Without zip64 fields, LibTorch's reader checks stored sizes itself.
    e.claimed_size = uint64_t{3} << 30;
  });
  auto result = ReadTorchArchive(huge, "huge.pt");
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(result), HasSubstr("huge.pt: zip record 'a/data/0' claims 3221225472 bytes"));
  EXPECT_EXIT(
      {
        rlimit limit;
        getrlimit(RLIMIT_AS, &limit);
        limit.rlim_cur = VirtualMemoryBytes() + (512u << 20);  // 512 MiB more than the process maps now.
        setrlimit(RLIMIT_AS, &limit);
        auto r = ReadTorchArchive(huge, "huge.pt");
        std::exit(!r.ok() && r.status().message().find("claims") != absl::string_view::npos ? 0 : 1);
      },
      ::testing::ExitedWithCode(0), "");
  // A deflated record's uncompressed size is not bounded by the file: torch.save never writes one.
  const std::string deflated = OneTensorZip(3, [](ZipEntry& e) {
    e.method = 8;
    e.claimed_uncompressed = uint64_t{3} << 30;
  });
  EXPECT_THAT(Message(ReadTorchArchive(deflated, "deflated.pt")),
              HasSubstr("deflated.pt: zip record 'a/data/0' is compressed (method 8)"));
  EXPECT_THAT(Message(ReadTorchArchive(OneTensorZip(3, [](ZipEntry& e) { e.method = 8; }), "d2.pt")),
              HasSubstr("is compressed"));
  // A stored record whose two sizes differ.
  EXPECT_THAT(Message(ReadTorchArchive(OneTensorZip(3,
                                                    [](ZipEntry& e) {
                                                      e.zip64_extra = true;
                                                      e.claimed_uncompressed = 100;
                                                    }),
                                       "sizes.pt")),
              HasSubstr("sizes differ"));
}

// Records that share bytes (a directory pointing many entries at one big record) would let a small file make the
// reader materialize many times its size.
TEST(TorchArchiveTest, OverlappingRecordsAreRefused) {
  std::vector<ZipEntry> entries = {{"a/data.pkl", OneTensorPickle(3)},
                                   {"a/version", "3"},
                                   {"a/data/0", std::string(12, '\x01')},
                                   {"a/data/1", "", 0, std::nullopt, std::nullopt, false, 0}};
  entries[3].claimed_size = OneTensorPickle(3).size();
  EXPECT_THAT(Message(ReadTorchArchive(BuildZip(entries), "overlap.pt")), HasSubstr("overlap"));
  // A local header offset outside the file.
  EXPECT_THAT(Message(ReadTorchArchive(OneTensorZip(3, [](ZipEntry& e) { e.local_offset = 1 << 20; }), "far.pt")),
              HasSubstr("far.pt: zip record 'a/data/0'"));
}

// miniz "extracts" a record marked as a directory (name ending in '/', or the MS-DOS directory attribute) by
// writing nothing, so LibTorch returned the uninitialized buffer it had allocated as the record's bytes: heap
// memory of the process read as a tensor (found by the torch_archive fuzzer: a version record marked as a directory
// read as garbage).
TEST(TorchArchiveTest, RecordsMarkedAsDirectoriesAreRefused) {
  auto result = ReadTorchArchive(OneTensorZip(3, [](ZipEntry& e) { e.external_attributes = 0x10; }), "dir.pt");
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(result), HasSubstr("dir.pt: zip record 'a/data/0' is a directory or has no name"));
  const std::string version_dir =
      BuildZip({{"a/data.pkl", OneTensorPickle(3)},
                {"a/version", "3", 0, std::nullopt, std::nullopt, false, std::nullopt, 0x3b},
                {"a/data/0", std::string(12, '\x01')}});
  EXPECT_THAT(Message(ReadTorchArchive(version_dir, "dir.pt")),
              HasSubstr("zip record 'a/version' is a directory or has no name"));
  EXPECT_THAT(Message(ReadTorchArchive(BuildZip({{"a/data.pkl", OneTensorPickle(3)},
                                                 {"a/version", "3"},
                                                 {"a/data/", ""},
                                                 {"a/data/0", std::string(12, '\x01')}}),
                                       "dir.pt")),
              HasSubstr("zip record 'a/data/' is a directory or has no name"));
}

TEST(TorchArchiveTest, MalformedZipDirectoriesAreRefusedCleanly) {
  const std::string good = OneTensorZip(3);
  ASSERT_TRUE(ReadTorchArchive(good, "good.pt").ok());
  // Every truncation and every single-byte change of the directory and end records: an error or a value, never a
  // crash.
  const size_t directory = good.find("PK\1\2");
  ASSERT_NE(directory, std::string::npos);
  for (size_t n = 0; n < good.size(); ++n) (void)ReadTorchArchive(good.substr(0, n), "cut.pt");
  for (size_t at = directory; at < good.size(); ++at) {
    for (int delta : {1, 0x7f, 0xff}) {
      std::string bad = good;
      bad[at] = static_cast<char>(bad[at] + delta);
      (void)ReadTorchArchive(bad, "flip.pt");
    }
  }
  // No end-of-directory record.
  EXPECT_THAT(Message(ReadTorchArchive("PK\3\4" + std::string(100, '\0'), "noend.pt")), HasSubstr("noend.pt"));
}

// What LibTorch's reader checks while it opens an archive is checked before: when its constructor throws, LibTorch
// 1.13 leaks the zip reader's state (found by the torch_archive fuzzer under LeakSanitizer).
TEST(TorchArchiveTest, ArchivesTheReaderCannotOpenAreRefusedBeforeIt) {
  auto with_version = [](const std::string& version) {
    return BuildZip(
        {{"a/data.pkl", OneTensorPickle(3)}, {"a/version", version}, {"a/data/0", std::string(12, '\x01')}});
  };
  EXPECT_TRUE(ReadTorchArchive(with_version("3\n"), "ok.pt").ok());
  for (const char* version : {"not a number", "", "0", "11", "99999999999999999999999", "3x"}) {
    EXPECT_THAT(Message(ReadTorchArchive(with_version(version), "version.pt")),
                HasSubstr("version.pt: malformed torch.save archive: version record"))
        << version;
  }
  // The version's bytes changed after the directory's CRC was written.
  std::string damaged = with_version("3");
  damaged[damaged.find("a/version") + 9] = '4';
  EXPECT_THAT(Message(ReadTorchArchive(damaged, "crc.pt")), HasSubstr("crc.pt: malformed torch.save archive: the "
                                                                      "version record fails its CRC check"));
  EXPECT_THAT(Message(ReadTorchArchive(BuildZip({{"data.pkl", "."}, {"version", "3"}}), "flat.pt")),
              HasSubstr("not in a folder"));
  EXPECT_THAT(Message(ReadTorchArchive(BuildZip({{"a/data.pkl", "."}}), "noversion.pt")),
              HasSubstr("no version record"));
}

// ---------------------------------------------------------------------------------------------------------------
// Real files and the writer.

// A file written by Python's torch.save (Debian's python3-torch): an OrderedDict with views sharing one storage, a
// transposed view, a parameter, float16, a 0-d integer and an empty tensor, inside a training-checkpoint dict.
TEST(TorchArchiveTest, PythonTorchSaveFileLoads) {
  testing::TempDir dir;
  const std::string path = dir.Join("py.pt");
  const std::string script = dir.WriteFile("write.py", R"(
import collections, sys, torch
base = torch.arange(24, dtype=torch.float32)
sd = collections.OrderedDict()
sd["w"] = base.reshape(4, 6)
sd["t"] = base.reshape(4, 6).t()
sd["slice"] = base[6:12]
sd["p"] = torch.nn.Parameter(torch.ones(2))
sd["h"] = torch.arange(5, dtype=torch.float16)
sd["n"] = torch.tensor(7)
sd["big"] = torch.arange(100000, dtype=torch.float32)
sd["empty"] = torch.zeros(0, 3)
sd._metadata = collections.OrderedDict([("", {"version": 1})])
torch.save({"state_dict": sd, "epoch": 3, "names": ["a", "b"]}, sys.argv[1])
)");
  std::string output;
  ASSERT_EQ(testing::RunCommand(absl::StrCat(FEDTUNE_PYTHON, " ", script, " ", path), &output), 0) << output;
  auto sd = ReadStateDictFile(path);
  ASSERT_TRUE(sd.ok()) << sd.status();
  const torch::Tensor base = torch::arange(24, torch::kFloat);
  EXPECT_TRUE(torch::equal(sd->at("w"), base.reshape({4, 6})));
  EXPECT_TRUE(torch::equal(sd->at("t"), base.reshape({4, 6}).t()));
  EXPECT_TRUE(torch::equal(sd->at("slice"), base.slice(0, 6, 12)));
  EXPECT_TRUE(torch::equal(sd->at("p"), torch::ones({2})));
  EXPECT_TRUE(torch::equal(sd->at("h"), torch::arange(5, torch::kHalf)));
  EXPECT_TRUE(torch::equal(sd->at("n"), torch::tensor(7, torch::kLong)));
  EXPECT_TRUE(torch::equal(sd->at("big"), torch::arange(100000, torch::kFloat)));
  EXPECT_EQ(sd->at("empty").sizes(), (std::vector<int64_t>{0, 3}));
}

TEST(TorchArchiveTest, WriterRoundTripsValues) {
  PickleValue root;
  root.kind = PickleValue::Kind::kDict;
  root.AddEntry("big", PickleValue::Int(int64_t{1} << 40));
  root.AddEntry("neg", PickleValue::Int(-5));
  root.AddEntry("mid", PickleValue::Int(300));
  root.AddEntry("s", PickleValue::String("é\n"));
  root.AddEntry("l", PickleValue::List({PickleValue::Tensor(torch::arange(5).to(torch::kLong)),
                                        PickleValue::Tensor(torch::ones({2, 2}, torch::kHalf))}));
  auto bytes = WriteTorchArchive(root);
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  auto back = ReadTorchArchive(*bytes, "mem");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ((*back)->Find("big")->i, int64_t{1} << 40);
  EXPECT_EQ((*back)->Find("neg")->i, -5);
  EXPECT_EQ((*back)->Find("mid")->i, 300);
  EXPECT_EQ((*back)->Find("s")->s, "é\n");
  const PickleValue* list = (*back)->Find("l");
  ASSERT_EQ(list->items.size(), 2u);
  EXPECT_TRUE(torch::equal(list->items[0]->tensor, torch::arange(5).to(torch::kLong)));
  EXPECT_TRUE(torch::equal(list->items[1]->tensor, torch::ones({2, 2}, torch::kHalf)));
  EXPECT_EQ(*WriteTorchArchive(root), *bytes);  // Deterministic.
}

// Values built by code are destroyed without recursion too, and the writer refuses what the reader would refuse.
TEST(TorchArchiveTest, DeepBuiltValuesAreDestroyedIterativelyAndNotWritten) {
  const int64_t live = PickleValueLiveCount();
  {
    PickleValuePtr chain = PickleValue::List({});
    for (int i = 0; i < 1000000; ++i) chain = PickleValue::List({chain});
    EXPECT_THAT(WriteTorchArchive(*chain).status().message(), HasSubstr("nested more than"));
  }
  EXPECT_EQ(PickleValueLiveCount(), live);
}

}  // namespace
}  // namespace fedtune::model
