#include "tools/checkpoint_writer.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "nlohmann/json.hpp"
#include "tools/checkpoint_numeric.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "safetensors data is little endian");

namespace squat::checkpoint {
namespace {

// Elements per work item: big enough to amortize thread hand-off, small enough that
// 2 * threads buffers stay in the tens of MB.
constexpr uint64_t kChunkElements = uint64_t{1} << 20;

struct Chunk {
  const TensorSpec* tensor;
  uint64_t start;
  uint64_t count;
};

struct ChunkBuffer {
  std::vector<float> values;
  std::vector<unsigned char> bytes;
  size_t size = 0;  // valid bytes
};

void GenerateChunk(const Chunk& chunk, const WeightOptions& options, ChunkBuffer* buffer) {
  buffer->values.resize(chunk.count);
  const NormalStream stream(options.seed, chunk.tensor->name);
  stream.Fill(chunk.start, chunk.count, buffer->values.data());
  const float scale = static_cast<float>(options.init_std);
  const float offset = chunk.tensor->init == TensorInit::kOnePlusNoise ? 1.0f : 0.0f;
  for (float& v : buffer->values) v = offset + scale * v;

  const size_t element_size = DTypeSize(options.dtype);
  buffer->size = chunk.count * element_size;
  buffer->bytes.resize(buffer->size);
  unsigned char* out = buffer->bytes.data();
  switch (options.dtype) {
    case DType::kF32:
      std::memcpy(out, buffer->values.data(), buffer->size);
      break;
    case DType::kF16:
      for (uint64_t i = 0; i < chunk.count; ++i) {
        const uint16_t h = FloatToHalf(buffer->values[i]);
        std::memcpy(out + 2 * i, &h, 2);
      }
      break;
    case DType::kBF16:
      for (uint64_t i = 0; i < chunk.count; ++i) {
        const uint16_t h = FloatToBFloat16(buffer->values[i]);
        std::memcpy(out + 2 * i, &h, 2);
      }
      break;
    default:
      buffer->size = 0;  // rejected earlier by SpecDType
  }
}

std::string HumanBytes(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int unit = 0;
  while (bytes >= 1024 && unit < 4) {
    bytes /= 1024;
    ++unit;
  }
  return absl::StrFormat("%.1f %s", bytes, units[unit]);
}

// The safetensors header: keys sorted (json object), data laid out in model order, padded with
// spaces so the data starts 8-byte aligned.
std::string ShardHeader(const ShardFile& shard, DType dtype) {
  nlohmann::json header = nlohmann::json::object();
  header["__metadata__"] = {{"format", "pt"}};
  uint64_t offset = 0;
  for (const TensorSpec* tensor : shard.tensors) {
    const uint64_t nbytes = static_cast<uint64_t>(tensor->numel()) * DTypeSize(dtype);
    header[tensor->name] = {
        {"dtype", DTypeName(dtype)}, {"shape", tensor->shape}, {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  return text;
}

}  // namespace

absl::StatusOr<std::vector<ShardFile>> PlanShards(const std::vector<TensorSpec>& tensors, int64_t shards,
                                                  size_t element_size) {
  if (shards < 1) return absl::InvalidArgumentError("--shards must be at least 1");
  if (static_cast<size_t>(shards) > tensors.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--shards ", shards, " exceeds the number of tensors (", tensors.size(), ")"));
  }
  std::vector<ShardFile> plan(shards);
  if (shards == 1) {
    plan[0].file_name = "model.safetensors";
  } else {
    for (int64_t i = 0; i < shards; ++i) {
      plan[i].file_name = absl::StrFormat("model-%05d-of-%05d.safetensors", i + 1, shards);
    }
  }
  long double total = 0;
  for (const TensorSpec& tensor : tensors) total += static_cast<long double>(tensor.numel()) * element_size;
  long double written = 0;
  size_t current = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const long double bytes = static_cast<long double>(tensors[i].numel()) * element_size;
    if (!plan[current].tensors.empty() && current + 1 < plan.size()) {
      const size_t shards_after = plan.size() - 1 - current;
      const bool must_move = tensors.size() - i <= shards_after;  // every shard needs a tensor
      const bool past_share = written + bytes / 2 > total * (current + 1) / shards;
      if (must_move || past_share) ++current;
    }
    plan[current].tensors.push_back(&tensors[i]);
    written += bytes;
  }
  return plan;
}

Progress::Progress(uint64_t total_bytes, bool enabled)
    : total_bytes_(total_bytes), enabled_(enabled), start_(std::chrono::steady_clock::now()) {}

void Progress::GroupDone(const std::string& group, const std::string& file_name) {
  if (!enabled_) return;
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  std::fprintf(stderr, "[%5.1f%%] %-12s -> %s  %s / %s  %.1f s  %s/s\n",
               100.0 * done_bytes_ / std::max<uint64_t>(total_bytes_, 1), group.c_str(), file_name.c_str(),
               HumanBytes(done_bytes_).c_str(), HumanBytes(total_bytes_).c_str(), seconds,
               HumanBytes(seconds > 0 ? done_bytes_ / seconds : 0).c_str());
}

absl::Status WriteShard(const std::string& path, const ShardFile& shard, const WeightOptions& options,
                        Progress* progress) {
  const std::string header_text = ShardHeader(shard, options.dtype);

  std::vector<Chunk> chunks;
  for (const TensorSpec* tensor : shard.tensors) {
    const uint64_t numel = static_cast<uint64_t>(tensor->numel());
    for (uint64_t start = 0; start < numel; start += kChunkElements) {
      chunks.push_back(Chunk{tensor, start, std::min(kChunkElements, numel - start)});
    }
  }

  std::unique_ptr<FILE, int (*)(FILE*)> file(std::fopen(path.c_str(), "wb"), &std::fclose);
  if (!file) return absl::InternalError(absl::StrCat("cannot create ", path, ": ", std::strerror(errno)));
  auto write_error = [&] {
    return absl::InternalError(absl::StrCat("error writing ", path, ": ", std::strerror(errno)));
  };
  unsigned char length[8];
  const uint64_t header_len = header_text.size();
  for (int i = 0; i < 8; ++i) length[i] = static_cast<unsigned char>(header_len >> (8 * i));
  if (std::fwrite(length, 1, 8, file.get()) != 8 ||
      std::fwrite(header_text.data(), 1, header_text.size(), file.get()) != header_text.size()) {
    return write_error();
  }

  // Two sets of buffers: workers fill one wave while this thread writes the previous one.
  const size_t wave = static_cast<size_t>(std::max(options.threads, 1));
  std::vector<ChunkBuffer> buffers[2] = {std::vector<ChunkBuffer>(wave), std::vector<ChunkBuffer>(wave)};
  auto write_wave = [&](size_t first_chunk, std::vector<ChunkBuffer>& set) -> bool {
    for (size_t k = 0; k < wave && first_chunk + k < chunks.size(); ++k) {
      const Chunk& chunk = chunks[first_chunk + k];
      if (std::fwrite(set[k].bytes.data(), 1, set[k].size, file.get()) != set[k].size) return false;
      progress->Add(set[k].size);
      const bool tensor_done = chunk.start + chunk.count == static_cast<uint64_t>(chunk.tensor->numel());
      const bool last_chunk = first_chunk + k + 1 == chunks.size();
      if (tensor_done && (last_chunk || chunks[first_chunk + k + 1].tensor->group != chunk.tensor->group)) {
        progress->GroupDone(chunk.tensor->group, shard.file_name);
      }
    }
    return true;
  };

  const size_t num_waves = (chunks.size() + wave - 1) / wave;
  for (size_t w = 0; w < num_waves; ++w) {
    std::vector<ChunkBuffer>& set = buffers[w % 2];
    std::vector<std::thread> workers;
    for (size_t k = 1; k < wave && w * wave + k < chunks.size(); ++k) {
      workers.emplace_back(GenerateChunk, std::cref(chunks[w * wave + k]), std::cref(options), &set[k]);
    }
    // This thread writes the previous wave, then helps with the current one.
    bool ok = w == 0 || write_wave((w - 1) * wave, buffers[(w - 1) % 2]);
    GenerateChunk(chunks[w * wave], options, &set[0]);
    for (std::thread& worker : workers) worker.join();
    if (!ok) return write_error();
  }
  if (num_waves > 0 && !write_wave((num_waves - 1) * wave, buffers[(num_waves - 1) % 2])) {
    return write_error();
  }
  if (std::fflush(file.get()) != 0) return write_error();
  FILE* raw = file.release();
  if (std::fclose(raw) != 0) return write_error();
  return absl::OkStatus();
}

}  // namespace squat::checkpoint
