#include "runtime/checkpoint/safetensors.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "nlohmann/json.hpp"

namespace squat {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using ::testing::HasSubstr;

class TempDir {
 public:
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "safetensors_test_XXXXXX").string();
    path_ = ::mkdtemp(pattern.data());
  }
  ~TempDir() { fs::remove_all(path_); }
  std::string File(const std::string& name) const { return (fs::path(path_) / name).string(); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

void WriteAll(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// A .safetensors file assembled by hand, independent of WriteSafetensors.
std::string AssembleFile(const std::string& header, const std::string& data) {
  std::string file(8, '\0');
  const uint64_t length = header.size();
  for (int i = 0; i < 8; ++i) file[i] = static_cast<char>((length >> (8 * i)) & 0xFF);
  return file + header + data;
}

std::mt19937_64 FreshRng() {
  std::random_device device;
  const uint64_t seed = (static_cast<uint64_t>(device()) << 32) | device();
  std::cerr << "random seed " << seed << "\n";
  return std::mt19937_64(seed);
}

// Random bytes that are meaningful for the dtype: arbitrary bit patterns for 16-bit floats
// (NaNs and infinities included), real random values otherwise.
std::string RandomPayload(std::mt19937_64& rng, DType dtype, int64_t numel) {
  std::string bytes(numel * DTypeSize(dtype), '\0');
  std::normal_distribution<double> normal(0.0, 3.0);
  for (int64_t i = 0; i < numel; ++i) {
    char* out = bytes.data() + i * DTypeSize(dtype);
    switch (dtype) {
      case DType::kF32: {
        const float v = static_cast<float>(normal(rng));
        std::memcpy(out, &v, 4);
        break;
      }
      case DType::kF64: {
        const double v = normal(rng);
        std::memcpy(out, &v, 8);
        break;
      }
      case DType::kBool:
        *out = static_cast<char>(rng() & 1);
        break;
      default: {
        const uint64_t bits = rng();
        std::memcpy(out, &bits, DTypeSize(dtype));
      }
    }
  }
  return bytes;
}

std::vector<int64_t> RandomShape(std::mt19937_64& rng) {
  std::vector<int64_t> shape(1 + rng() % 3);
  for (int64_t& dim : shape) dim = 1 + static_cast<int64_t>(rng() % 9);
  return shape;
}

int64_t Numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

const DType kAllDTypes[] = {DType::kF32, DType::kF16, DType::kBF16, DType::kF64, DType::kI64,
                            DType::kI32, DType::kI16, DType::kI8,   DType::kU8,  DType::kBool};

TEST(SafetensorsTest, DTypeNamesAndSizes) {
  const std::pair<DType, std::pair<const char*, size_t>> expected[] = {
      {DType::kF32, {"F32", 4}},  {DType::kF16, {"F16", 2}}, {DType::kBF16, {"BF16", 2}},
      {DType::kF64, {"F64", 8}},  {DType::kI64, {"I64", 8}}, {DType::kI32, {"I32", 4}},
      {DType::kI16, {"I16", 2}},  {DType::kI8, {"I8", 1}},   {DType::kU8, {"U8", 1}},
      {DType::kBool, {"BOOL", 1}}};
  for (const auto& [dtype, name_size] : expected) {
    EXPECT_STREQ(DTypeName(dtype), name_size.first);
    EXPECT_EQ(DTypeSize(dtype), name_size.second);
  }
}

struct StoredTensor {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  std::string bytes;
};

std::vector<StoredTensor> RandomTensors(std::mt19937_64& rng, const std::string& prefix) {
  std::vector<StoredTensor> tensors;
  for (DType dtype : kAllDTypes) {
    StoredTensor t;
    t.name = prefix + DTypeName(dtype) + "." + std::to_string(rng() % 1000);
    t.dtype = dtype;
    t.shape = RandomShape(rng);
    t.bytes = RandomPayload(rng, dtype, Numel(t.shape));
    tensors.push_back(std::move(t));
  }
  return tensors;
}

std::vector<NamedTensor> AsNamed(const std::vector<StoredTensor>& tensors) {
  std::vector<NamedTensor> named;
  for (const StoredTensor& t : tensors) {
    named.push_back(NamedTensor{t.name, TensorView{t.dtype, t.shape, t.bytes.data(), t.bytes.size()}});
  }
  return named;
}

void ExpectSameTensor(const TensorView* view, const StoredTensor& expected) {
  ASSERT_NE(view, nullptr) << expected.name;
  EXPECT_EQ(view->dtype, expected.dtype) << expected.name;
  EXPECT_EQ(view->shape, expected.shape) << expected.name;
  EXPECT_EQ(view->numel(), Numel(expected.shape));
  ASSERT_EQ(view->nbytes, expected.bytes.size()) << expected.name;
  EXPECT_EQ(std::memcmp(view->data, expected.bytes.data(), view->nbytes), 0) << expected.name;
}

TEST(SafetensorsTest, RoundTripsEveryDType) {
  auto rng = FreshRng();
  TempDir dir;
  const std::vector<StoredTensor> tensors = RandomTensors(rng, "layer.");
  const std::map<std::string, std::string> metadata = {{"format", "pt"}, {"note", std::to_string(rng())}};
  ASSERT_TRUE(WriteSafetensors(dir.File("a.safetensors"), AsNamed(tensors), metadata).ok());

  auto file = SafetensorsFile::Open(dir.File("a.safetensors"));
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->metadata(), metadata);
  std::vector<std::string> expected_names;
  for (const StoredTensor& t : tensors) {
    ExpectSameTensor((*file)->Find(t.name), t);
    expected_names.push_back(t.name);
  }
  std::sort(expected_names.begin(), expected_names.end());
  EXPECT_EQ((*file)->Names(), expected_names);
  EXPECT_EQ((*file)->Find("missing"), nullptr);
}

TEST(SafetensorsTest, WrittenFileFollowsTheFormat) {
  auto rng = FreshRng();
  TempDir dir;
  const std::vector<StoredTensor> tensors = RandomTensors(rng, "w.");
  ASSERT_TRUE(WriteSafetensors(dir.File("b.safetensors"), AsNamed(tensors)).ok());

  // Decode the bytes independently of the reader.
  const std::string bytes = ReadAll(dir.File("b.safetensors"));
  ASSERT_GE(bytes.size(), 8u);
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | static_cast<unsigned char>(bytes[i]);
  EXPECT_EQ((8 + header_len) % 8, 0u) << "tensor data must start 8-byte aligned";
  ASSERT_LE(8 + header_len, bytes.size());
  const json header = json::parse(bytes.substr(8, header_len));
  EXPECT_FALSE(header.contains("__metadata__"));
  size_t data_total = 0;
  for (const StoredTensor& t : tensors) {
    ASSERT_TRUE(header.contains(t.name));
    const json& entry = header[t.name];
    EXPECT_EQ(entry["dtype"], DTypeName(t.dtype));
    EXPECT_EQ(entry["shape"].get<std::vector<int64_t>>(), t.shape);
    const uint64_t begin = entry["data_offsets"][0];
    const uint64_t end = entry["data_offsets"][1];
    ASSERT_EQ(end - begin, t.bytes.size());
    EXPECT_EQ(bytes.substr(8 + header_len + begin, end - begin), t.bytes) << t.name;
    data_total += t.bytes.size();
  }
  EXPECT_EQ(bytes.size(), 8 + header_len + data_total);
}

TEST(SafetensorsTest, ReadsHandAssembledFile) {
  auto rng = FreshRng();
  TempDir dir;
  const std::string a = RandomPayload(rng, DType::kBF16, 6);
  const std::string b = RandomPayload(rng, DType::kF32, 4);
  // Data deliberately not in name order, with the metadata last.
  const json header = {{"zeta", {{"dtype", "BF16"}, {"shape", {2, 3}}, {"data_offsets", {0, 12}}}},
                       {"alpha", {{"dtype", "F32"}, {"shape", {4}}, {"data_offsets", {12, 28}}}},
                       {"__metadata__", {{"k", "v"}}}};
  WriteAll(dir.File("h.safetensors"), AssembleFile(header.dump(), a + b));
  auto file = SafetensorsFile::Open(dir.File("h.safetensors"));
  ASSERT_TRUE(file.ok()) << file.status();
  ExpectSameTensor((*file)->Find("zeta"), StoredTensor{"zeta", DType::kBF16, {2, 3}, a});
  ExpectSameTensor((*file)->Find("alpha"), StoredTensor{"alpha", DType::kF32, {4}, b});
  EXPECT_EQ((*file)->metadata().at("k"), "v");
  EXPECT_EQ((*file)->Names().size(), 2u);
}

TEST(SafetensorsTest, ViewsAreTheMappedFileNotACopy) {
  auto rng = FreshRng();
  TempDir dir;
  const std::string original = RandomPayload(rng, DType::kF32, 16);
  const json header = {{"t", {{"dtype", "F32"}, {"shape", {16}}, {"data_offsets", {0, 64}}}}};
  const std::string header_text = header.dump();
  WriteAll(dir.File("m.safetensors"), AssembleFile(header_text, original));
  auto file = SafetensorsFile::Open(dir.File("m.safetensors"));
  ASSERT_TRUE(file.ok()) << file.status();

  // Rewrite the data in place: a shared read-only mapping sees it, a copy would not.
  const std::string replacement = RandomPayload(rng, DType::kF32, 16);
  ASSERT_NE(replacement, original);
  {
    std::fstream out(dir.File("m.safetensors"), std::ios::binary | std::ios::in | std::ios::out);
    out.seekp(static_cast<std::streamoff>(8 + header_text.size()));
    out.write(replacement.data(), static_cast<std::streamsize>(replacement.size()));
  }
  const TensorView* view = (*file)->Find("t");
  ASSERT_NE(view, nullptr);
  EXPECT_EQ(std::memcmp(view->data, replacement.data(), replacement.size()), 0);
}

TEST(SafetensorsTest, EmptyAndZeroSizedTensors) {
  TempDir dir;
  ASSERT_TRUE(WriteSafetensors(dir.File("empty.safetensors"), {}).ok());
  auto empty = SafetensorsFile::Open(dir.File("empty.safetensors"));
  ASSERT_TRUE(empty.ok()) << empty.status();
  EXPECT_TRUE((*empty)->Names().empty());

  const std::vector<NamedTensor> zero = {{"z", TensorView{DType::kF16, {0, 5}, nullptr, 0}}};
  ASSERT_TRUE(WriteSafetensors(dir.File("zero.safetensors"), zero).ok());
  auto file = SafetensorsFile::Open(dir.File("zero.safetensors"));
  ASSERT_TRUE(file.ok()) << file.status();
  ASSERT_NE((*file)->Find("z"), nullptr);
  EXPECT_EQ((*file)->Find("z")->nbytes, 0u);
  EXPECT_EQ((*file)->Find("z")->numel(), 0);
}

TEST(SafetensorsTest, WriterRejectsBadInput) {
  TempDir dir;
  float values[4] = {1.5f, -2.25f, 3.0f, 0.125f};
  const std::vector<NamedTensor> duplicate = {{"x", TensorView{DType::kF32, {4}, values, 16}},
                                              {"x", TensorView{DType::kF32, {4}, values, 16}}};
  EXPECT_FALSE(WriteSafetensors(dir.File("d.safetensors"), duplicate).ok());
  const std::vector<NamedTensor> mismatch = {{"x", TensorView{DType::kF32, {5}, values, 16}}};
  EXPECT_FALSE(WriteSafetensors(dir.File("m.safetensors"), mismatch).ok());
  const std::vector<NamedTensor> ok = {{"x", TensorView{DType::kF32, {4}, values, 16}}};
  EXPECT_FALSE(WriteSafetensors(dir.File("no/such/dir.safetensors"), ok).ok());
}

// ---- corrupt files: errors, never crashes ----

absl::Status OpenBytes(const TempDir& dir, const std::string& bytes) {
  const std::string path = dir.File("corrupt.safetensors");
  WriteAll(path, bytes);
  return SafetensorsFile::Open(path).status();
}

std::string OneTensorHeader(const char* dtype, std::vector<int64_t> shape, uint64_t begin, uint64_t end) {
  return json{{"t", {{"dtype", dtype}, {"shape", shape}, {"data_offsets", {begin, end}}}}}.dump();
}

TEST(SafetensorsCorruptTest, ShortAndTruncatedFiles) {
  auto rng = FreshRng();
  TempDir dir;
  EXPECT_THAT(std::string(OpenBytes(dir, "").message()), HasSubstr("too short"));
  EXPECT_THAT(std::string(OpenBytes(dir, std::string("\x10\x00\x00", 3)).message()), HasSubstr("too short"));

  // A valid file with its last bytes cut off.
  const std::string data = RandomPayload(rng, DType::kF32, 32);
  const std::string full = AssembleFile(OneTensorHeader("F32", {32}, 0, 128), data);
  ASSERT_TRUE(OpenBytes(dir, full).ok());
  for (size_t cut : {size_t{1}, size_t{50}, size_t{127}, full.size() - 9, full.size() - 1}) {
    absl::Status status = OpenBytes(dir, full.substr(0, full.size() - cut));
    ASSERT_FALSE(status.ok()) << "cut " << cut;
    EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss);
    EXPECT_THAT(std::string(status.message()), HasSubstr("corrupt.safetensors"));
  }
}

TEST(SafetensorsCorruptTest, BadHeaders) {
  TempDir dir;
  const std::string data(64, '\x42');
  auto with_length = [&](uint64_t length) {
    std::string file = AssembleFile("{}", data);
    for (int i = 0; i < 8; ++i) file[i] = static_cast<char>((length >> (8 * i)) & 0xFF);
    return file;
  };
  EXPECT_THAT(std::string(OpenBytes(dir, with_length(uint64_t{1} << 60)).message()),
              HasSubstr("header length"));
  EXPECT_THAT(std::string(OpenBytes(dir, with_length(500)).message()), HasSubstr("header length"));
  EXPECT_THAT(std::string(OpenBytes(dir, AssembleFile("{\"t\": {", data)).message()), HasSubstr("JSON"));
  EXPECT_THAT(std::string(OpenBytes(dir, AssembleFile("[1,2]", data)).message()), HasSubstr("object"));
  EXPECT_THAT(std::string(OpenBytes(dir, AssembleFile(R"({"t": 5})", data)).message()),
              HasSubstr("not an object"));
  EXPECT_THAT(
      std::string(
          OpenBytes(dir, AssembleFile(R"({"t": {"shape": [2], "data_offsets": [0, 8]}})", data)).message()),
      HasSubstr("dtype"));
  EXPECT_THAT(std::string(OpenBytes(dir, AssembleFile(OneTensorHeader("Q7", {2}, 0, 2), data)).message()),
              HasSubstr("dtype"));
  EXPECT_THAT(std::string(OpenBytes(dir, AssembleFile(R"({"t": {"dtype": "F32", "shape": [-2], )"
                                                      R"("data_offsets": [0, 8]}})",
                                                      data))
                              .message()),
              HasSubstr("shape"));
  EXPECT_THAT(std::string(OpenBytes(dir, AssembleFile(R"({"t": {"dtype": "F32", "shape": [2], )"
                                                      R"("data_offsets": [0]}})",
                                                      data))
                              .message()),
              HasSubstr("data_offsets"));
  EXPECT_THAT(std::string(OpenBytes(dir, AssembleFile(R"({"__metadata__": {"a": 1}})", data)).message()),
              HasSubstr("__metadata__"));
}

TEST(SafetensorsCorruptTest, SizeMismatchOverlapAndPastEnd) {
  TempDir dir;
  const std::string data(64, '\x11');
  // 2x3 F32 needs 24 bytes, not 20.
  EXPECT_THAT(
      std::string(OpenBytes(dir, AssembleFile(OneTensorHeader("F32", {2, 3}, 0, 20), data)).message()),
      HasSubstr("bytes"));
  // begin after end.
  EXPECT_THAT(std::string(OpenBytes(dir, AssembleFile(OneTensorHeader("U8", {0}, 8, 4), data)).message()),
              HasSubstr("begin after"));
  // Offsets past the end of the data.
  EXPECT_THAT(std::string(OpenBytes(dir, AssembleFile(OneTensorHeader("F32", {4}, 56, 72), data)).message()),
              HasSubstr("past the end"));
  // Two tensors sharing bytes.
  const json overlapping = {{"a", {{"dtype", "F32"}, {"shape", {4}}, {"data_offsets", {0, 16}}}},
                            {"b", {{"dtype", "F32"}, {"shape", {4}}, {"data_offsets", {8, 24}}}}};
  EXPECT_THAT(std::string(OpenBytes(dir, AssembleFile(overlapping.dump(), data)).message()),
              HasSubstr("overlap"));
  // A huge shape whose byte size overflows.
  EXPECT_THAT(
      std::string(
          OpenBytes(dir, AssembleFile(OneTensorHeader("F64", {1ll << 40, 1ll << 40}, 0, 8), data)).message()),
      HasSubstr("too large"));
}

TEST(SafetensorsCorruptTest, RandomHeaderDamageNeverCrashes) {
  auto rng = FreshRng();
  TempDir dir;
  const std::vector<StoredTensor> tensors = RandomTensors(rng, "f.");
  ASSERT_TRUE(WriteSafetensors(dir.File("good.safetensors"), AsNamed(tensors)).ok());
  const std::string good = ReadAll(dir.File("good.safetensors"));
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | static_cast<unsigned char>(good[i]);
  int rejected = 0;
  for (int trial = 0; trial < 300; ++trial) {
    std::string damaged = good;
    const int flips = 1 + static_cast<int>(rng() % 4);
    for (int f = 0; f < flips; ++f) {
      const size_t pos = rng() % (8 + header_len);  // the length field or the header text
      damaged[pos] = static_cast<char>(rng() & 0xFF);
    }
    if (rng() % 4 == 0) damaged.resize(rng() % damaged.size());
    absl::Status status = OpenBytes(dir, damaged);
    if (!status.ok()) {
      ++rejected;
      EXPECT_FALSE(status.message().empty());
    }
  }
  EXPECT_GT(rejected, 0);
}

TEST(SafetensorsCorruptTest, MissingFile) {
  TempDir dir;
  auto file = SafetensorsFile::Open(dir.File("nope.safetensors"));
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), absl::StatusCode::kNotFound);
}

// ---- checkpoint directories ----

TEST(CheckpointReaderTest, SingleFile) {
  auto rng = FreshRng();
  TempDir dir;
  const std::vector<StoredTensor> tensors = RandomTensors(rng, "model.");
  ASSERT_TRUE(WriteSafetensors(dir.File("model.safetensors"), AsNamed(tensors)).ok());
  auto reader = CheckpointReader::Open(dir.path());
  ASSERT_TRUE(reader.ok()) << reader.status();
  size_t total = 0;
  for (const StoredTensor& t : tensors) {
    ExpectSameTensor((*reader)->Find(t.name), t);
    total += t.bytes.size();
  }
  EXPECT_EQ((*reader)->total_bytes(), total);
  EXPECT_EQ((*reader)->Names().size(), tensors.size());
}

struct ShardedCheckpoint {
  std::vector<std::vector<StoredTensor>> shards;
  json index;
};

ShardedCheckpoint WriteSharded(std::mt19937_64& rng, const TempDir& dir, int num_shards) {
  ShardedCheckpoint checkpoint;
  checkpoint.index = {{"metadata", {{"total_size", 0}}}, {"weight_map", json::object()}};
  size_t total = 0;
  for (int s = 0; s < num_shards; ++s) {
    const std::string file =
        "model-0000" + std::to_string(s + 1) + "-of-0000" + std::to_string(num_shards) + ".safetensors";
    checkpoint.shards.push_back(RandomTensors(rng, "shard" + std::to_string(s) + "."));
    EXPECT_TRUE(WriteSafetensors(dir.File(file), AsNamed(checkpoint.shards.back())).ok());
    for (const StoredTensor& t : checkpoint.shards.back()) {
      checkpoint.index["weight_map"][t.name] = file;
      total += t.bytes.size();
    }
  }
  checkpoint.index["metadata"]["total_size"] = total;
  WriteAll(dir.File("model.safetensors.index.json"), checkpoint.index.dump(2));
  return checkpoint;
}

TEST(CheckpointReaderTest, ShardedThroughIndex) {
  auto rng = FreshRng();
  TempDir dir;
  const ShardedCheckpoint checkpoint = WriteSharded(rng, dir, 3);
  auto reader = CheckpointReader::Open(dir.path());
  ASSERT_TRUE(reader.ok()) << reader.status();
  size_t count = 0;
  for (const auto& shard : checkpoint.shards) {
    for (const StoredTensor& t : shard) {
      ExpectSameTensor((*reader)->Find(t.name), t);
      ++count;
    }
  }
  EXPECT_EQ((*reader)->Names().size(), count);
  EXPECT_EQ((*reader)->total_bytes(), checkpoint.index["metadata"]["total_size"].get<size_t>());
}

TEST(CheckpointReaderTest, IndexErrors) {
  auto rng = FreshRng();
  TempDir dir;
  ShardedCheckpoint checkpoint = WriteSharded(rng, dir, 2);
  const std::string index_path = dir.File("model.safetensors.index.json");

  json wrong_shard = checkpoint.index;  // a tensor attributed to the other shard
  const std::string moved = checkpoint.shards[0][0].name;
  wrong_shard["weight_map"][moved] = "model-00002-of-00002.safetensors";
  WriteAll(index_path, wrong_shard.dump());
  auto reader = CheckpointReader::Open(dir.path());
  ASSERT_FALSE(reader.ok());
  EXPECT_THAT(std::string(reader.status().message()), HasSubstr(moved));

  json missing_file = checkpoint.index;
  missing_file["weight_map"][moved] = "model-00009-of-00009.safetensors";
  WriteAll(index_path, missing_file.dump());
  EXPECT_FALSE(CheckpointReader::Open(dir.path()).ok());

  json escaping = checkpoint.index;
  escaping["weight_map"][moved] = "../model-00001-of-00002.safetensors";
  WriteAll(index_path, escaping.dump());
  EXPECT_FALSE(CheckpointReader::Open(dir.path()).ok());

  WriteAll(index_path, R"({"metadata": {}})");
  EXPECT_FALSE(CheckpointReader::Open(dir.path()).ok());
  WriteAll(index_path, "not json");
  EXPECT_FALSE(CheckpointReader::Open(dir.path()).ok());

  WriteAll(index_path, checkpoint.index.dump());
  EXPECT_TRUE(CheckpointReader::Open(dir.path()).ok());
}

TEST(CheckpointReaderTest, DuplicateTensorAcrossShards) {
  auto rng = FreshRng();
  TempDir dir;
  const std::vector<StoredTensor> tensors = RandomTensors(rng, "dup.");
  ASSERT_TRUE(WriteSafetensors(dir.File("a.safetensors"), AsNamed(tensors)).ok());
  std::vector<StoredTensor> with_extra = tensors;
  with_extra.push_back(StoredTensor{"extra", DType::kF32, {2}, RandomPayload(rng, DType::kF32, 2)});
  ASSERT_TRUE(WriteSafetensors(dir.File("b.safetensors"), AsNamed(with_extra)).ok());
  json index = {{"weight_map", json::object()}};
  for (const StoredTensor& t : tensors) index["weight_map"][t.name] = "a.safetensors";
  index["weight_map"]["extra"] = "b.safetensors";  // pulls in b, which repeats a's tensors
  WriteAll(dir.File("model.safetensors.index.json"), index.dump());
  auto reader = CheckpointReader::Open(dir.path());
  ASSERT_FALSE(reader.ok());
  EXPECT_THAT(std::string(reader.status().message()), HasSubstr("more than one shard"));
}

TEST(CheckpointReaderTest, EmptyDirectory) {
  TempDir dir;
  auto reader = CheckpointReader::Open(dir.path());
  ASSERT_FALSE(reader.ok());
  EXPECT_EQ(reader.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(reader.status().message()), HasSubstr("model.safetensors"));
}

}  // namespace
}  // namespace squat
