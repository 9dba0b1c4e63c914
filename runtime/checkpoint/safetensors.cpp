#include "runtime/checkpoint/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace squat {
namespace {

using nlohmann::json;

// The reference implementation refuses headers above 100 MB; a larger length means corruption.
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

struct DTypeInfo {
  DType dtype;
  const char* name;
  size_t size;
};

constexpr DTypeInfo kDTypes[] = {
    {DType::kF32, "F32", 4}, {DType::kF16, "F16", 2},   {DType::kBF16, "BF16", 2}, {DType::kF64, "F64", 8},
    {DType::kI64, "I64", 8}, {DType::kI32, "I32", 4},   {DType::kI16, "I16", 2},   {DType::kI8, "I8", 1},
    {DType::kU8, "U8", 1},   {DType::kBool, "BOOL", 1},
};

bool ParseDType(const std::string& name, DType* out) {
  for (const DTypeInfo& info : kDTypes) {
    if (name == info.name) {
      *out = info.dtype;
      return true;
    }
  }
  return false;
}

// numel * element size, or false on overflow or a negative dimension.
bool ByteSize(const std::vector<int64_t>& shape, size_t element_size, uint64_t* out) {
  unsigned __int128 total = element_size;
  for (int64_t dim : shape) {
    if (dim < 0) return false;
    total *= static_cast<uint64_t>(dim);
    if (total > UINT64_MAX) return false;
  }
  *out = static_cast<uint64_t>(total);
  return true;
}

absl::Status Corrupt(const std::string& path, absl::string_view problem) {
  return absl::DataLossError(absl::StrCat("safetensors file ", path, ": ", problem));
}

struct ParsedEntry {
  std::string name;
  TensorView view;
  uint64_t begin = 0;
  uint64_t end = 0;
};

absl::Status ParseEntry(const std::string& path, const std::string& name, const json& entry,
                        uint64_t data_size, ParsedEntry* out) {
  auto bad = [&](absl::string_view problem) {
    return Corrupt(path, absl::StrCat("tensor '", name, "': ", problem));
  };
  if (!entry.is_object()) return bad("header entry is not an object");
  auto dtype_it = entry.find("dtype");
  auto shape_it = entry.find("shape");
  auto offsets_it = entry.find("data_offsets");
  if (dtype_it == entry.end() || !dtype_it->is_string()) return bad("missing or non-string dtype");
  if (shape_it == entry.end() || !shape_it->is_array()) return bad("missing or non-array shape");
  if (offsets_it == entry.end() || !offsets_it->is_array() || offsets_it->size() != 2) {
    return bad("data_offsets must be an array of two integers");
  }
  out->name = name;
  const std::string dtype_name = dtype_it->get<std::string>();
  if (!ParseDType(dtype_name, &out->view.dtype)) {
    return bad(absl::StrCat("unsupported dtype '", dtype_name, "'"));
  }
  for (const json& dim : *shape_it) {
    if (!dim.is_number_unsigned()) return bad("shape entries must be non-negative integers");
    out->view.shape.push_back(dim.get<int64_t>());
  }
  for (const json& offset : *offsets_it) {
    if (!offset.is_number_unsigned()) return bad("data_offsets must be non-negative integers");
  }
  out->begin = (*offsets_it)[0].get<uint64_t>();
  out->end = (*offsets_it)[1].get<uint64_t>();
  if (out->begin > out->end) return bad("data_offsets begin after they end");
  if (out->end > data_size) {
    return bad(absl::StrCat("data_offsets end ", out->end, " past the end of the data (", data_size,
                            " bytes); file truncated?"));
  }
  uint64_t expected = 0;
  if (!ByteSize(out->view.shape, DTypeSize(out->view.dtype), &expected)) {
    return bad("shape is too large");
  }
  if (out->end - out->begin != expected) {
    return bad(
        absl::StrCat("holds ", out->end - out->begin, " bytes but its shape and dtype need ", expected));
  }
  out->view.nbytes = static_cast<size_t>(expected);
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadTextFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

}  // namespace

size_t DTypeSize(DType dtype) {
  for (const DTypeInfo& info : kDTypes) {
    if (info.dtype == dtype) return info.size;
  }
  return 0;
}

const char* DTypeName(DType dtype) {
  for (const DTypeInfo& info : kDTypes) {
    if (info.dtype == dtype) return info.name;
  }
  return "?";
}

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int64_t dim : shape) n *= dim;
  return n;
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return absl::NotFoundError(absl::StrCat("cannot open ", path, ": ", std::strerror(errno)));
  }
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    return absl::InternalError(absl::StrCat("cannot stat ", path, ": ", std::strerror(err)));
  }
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  if (file_size < 8) {
    ::close(fd);
    return Corrupt(path, absl::StrCat("only ", file_size, " bytes; too short for the header length"));
  }
  void* mapping = ::mmap(nullptr, file_size, PROT_READ, MAP_SHARED, fd, 0);
  int map_errno = errno;
  ::close(fd);  // the mapping keeps the file alive
  if (mapping == MAP_FAILED) {
    return absl::InternalError(absl::StrCat("cannot mmap ", path, ": ", std::strerror(map_errno)));
  }
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;
  file->mapping_ = mapping;
  file->mapping_size_ = file_size;

  const auto* bytes = static_cast<const unsigned char*>(mapping);
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | bytes[i];  // little endian
  if (header_len > kMaxHeaderBytes) {
    return Corrupt(path, absl::StrCat("header length ", header_len, " is implausible"));
  }
  if (header_len > file_size - 8) {
    return Corrupt(path, absl::StrCat("header length ", header_len, " exceeds the file size ", file_size,
                                      "; file truncated?"));
  }
  const char* header_begin = reinterpret_cast<const char*>(bytes + 8);
  json header = json::parse(header_begin, header_begin + header_len, nullptr,
                            /*allow_exceptions=*/false);
  if (header.is_discarded()) return Corrupt(path, "header is not valid JSON");
  if (!header.is_object()) return Corrupt(path, "header is not a JSON object");

  const uint64_t data_size = file_size - 8 - header_len;
  const unsigned char* data = bytes + 8 + header_len;
  std::vector<ParsedEntry> entries;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") {
      if (!it->is_object()) return Corrupt(path, "__metadata__ is not an object");
      for (auto meta = it->begin(); meta != it->end(); ++meta) {
        if (!meta->is_string()) {
          return Corrupt(path, absl::StrCat("__metadata__ value '", meta.key(), "' is not a string"));
        }
        file->metadata_[meta.key()] = meta->get<std::string>();
      }
      continue;
    }
    ParsedEntry entry;
    if (auto status = ParseEntry(path, it.key(), *it, data_size, &entry); !status.ok()) return status;
    entries.push_back(std::move(entry));
  }

  // Overlapping byte ranges would alias tensors: reject them.
  std::vector<const ParsedEntry*> by_offset;
  for (const ParsedEntry& entry : entries) by_offset.push_back(&entry);
  std::sort(by_offset.begin(), by_offset.end(),
            [](const ParsedEntry* a, const ParsedEntry* b) { return a->begin < b->begin; });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    if (by_offset[i]->begin < by_offset[i - 1]->end) {
      return Corrupt(path, absl::StrCat("tensors '", by_offset[i - 1]->name, "' and '", by_offset[i]->name,
                                        "' overlap"));
    }
  }

  for (ParsedEntry& entry : entries) {
    entry.view.data = data + entry.begin;
    file->tensors_.emplace(entry.name, std::move(entry.view));
  }
  return file;
}

SafetensorsFile::~SafetensorsFile() {
  if (mapping_ != nullptr) ::munmap(mapping_, mapping_size_);
}

const TensorView* SafetensorsFile::Find(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

std::vector<std::string> SafetensorsFile::Names() const {
  std::vector<std::string> names;
  names.reserve(tensors_.size());
  for (const auto& [name, view] : tensors_) names.push_back(name);
  return names;
}

absl::StatusOr<std::unique_ptr<CheckpointReader>> CheckpointReader::Open(const std::string& dir) {
  namespace fs = std::filesystem;
  std::unique_ptr<CheckpointReader> reader(new CheckpointReader());
  const fs::path single = fs::path(dir) / "model.safetensors";
  const fs::path index_path = fs::path(dir) / "model.safetensors.index.json";
  std::error_code ec;

  if (fs::exists(single, ec)) {
    auto file = SafetensorsFile::Open(single.string());
    if (!file.ok()) return file.status();
    reader->files_.push_back(std::move(*file));
  } else if (fs::exists(index_path, ec)) {
    auto text = ReadTextFile(index_path.string());
    if (!text.ok()) return text.status();
    json index = json::parse(*text, nullptr, /*allow_exceptions=*/false);
    if (index.is_discarded() || !index.is_object()) {
      return absl::DataLossError(absl::StrCat(index_path.string(), ": not a JSON object"));
    }
    auto map_it = index.find("weight_map");
    if (map_it == index.end() || !map_it->is_object()) {
      return absl::DataLossError(absl::StrCat(index_path.string(), ": missing weight_map object"));
    }
    std::map<std::string, size_t> shard_slot;  // shard file name -> files_ index
    std::vector<std::pair<std::string, size_t>> expected;
    for (auto it = map_it->begin(); it != map_it->end(); ++it) {
      if (!it->is_string()) {
        return absl::DataLossError(
            absl::StrCat(index_path.string(), ": weight_map entry '", it.key(), "' is not a string"));
      }
      const std::string shard = it->get<std::string>();
      const fs::path shard_path(shard);
      if (shard.empty() || shard_path.is_absolute() ||
          std::find(shard_path.begin(), shard_path.end(), "..") != shard_path.end()) {
        return absl::DataLossError(
            absl::StrCat(index_path.string(), ": shard name '", shard, "' leaves the directory"));
      }
      auto slot = shard_slot.find(shard);
      if (slot == shard_slot.end()) {
        auto file = SafetensorsFile::Open((fs::path(dir) / shard_path).string());
        if (!file.ok()) return file.status();
        slot = shard_slot.emplace(shard, reader->files_.size()).first;
        reader->files_.push_back(std::move(*file));
      }
      expected.emplace_back(it.key(), slot->second);
    }
    // Each weight must be in the shard the index names.
    for (const auto& [name, slot] : expected) {
      if (reader->files_[slot]->Find(name) == nullptr) {
        return absl::DataLossError(absl::StrCat(index_path.string(), ": tensor '", name, "' is not in ",
                                                reader->files_[slot]->path()));
      }
    }
  } else {
    return absl::NotFoundError(absl::StrCat("no model.safetensors or model.safetensors.index.json in ", dir));
  }

  for (const auto& file : reader->files_) {
    for (const std::string& name : file->Names()) {
      if (!reader->index_.emplace(name, file->Find(name)).second) {
        return absl::DataLossError(
            absl::StrCat("tensor '", name, "' appears in more than one shard of ", dir));
      }
    }
  }
  return reader;
}

const TensorView* CheckpointReader::Find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : it->second;
}

std::vector<std::string> CheckpointReader::Names() const {
  std::vector<std::string> names;
  names.reserve(index_.size());
  for (const auto& [name, view] : index_) names.push_back(name);
  return names;
}

size_t CheckpointReader::total_bytes() const {
  size_t total = 0;
  for (const auto& [name, view] : index_) total += view->nbytes;
  return total;
}

absl::Status WriteSafetensors(const std::string& path, const std::vector<NamedTensor>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  std::vector<const NamedTensor*> sorted;
  for (const NamedTensor& tensor : tensors) sorted.push_back(&tensor);
  std::sort(sorted.begin(), sorted.end(),
            [](const NamedTensor* a, const NamedTensor* b) { return a->name < b->name; });

  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (size_t i = 0; i < sorted.size(); ++i) {
    const NamedTensor& tensor = *sorted[i];
    if (tensor.name.empty() || tensor.name == "__metadata__") {
      return absl::InvalidArgumentError(absl::StrCat("invalid tensor name '", tensor.name, "'"));
    }
    if (i > 0 && sorted[i - 1]->name == tensor.name) {
      return absl::InvalidArgumentError(absl::StrCat("duplicate tensor name '", tensor.name, "'"));
    }
    uint64_t expected = 0;
    if (!ByteSize(tensor.view.shape, DTypeSize(tensor.view.dtype), &expected) ||
        expected != tensor.view.nbytes) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor '", tensor.name, "': nbytes ", tensor.view.nbytes, " does not match its shape and dtype"));
    }
    if (expected > 0 && tensor.view.data == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", tensor.name, "' has no data"));
    }
    header[tensor.name] = {{"dtype", DTypeName(tensor.view.dtype)},
                           {"shape", tensor.view.shape},
                           {"data_offsets", {offset, offset + expected}}};
    offset += expected;
  }
  std::string header_text = header.dump();
  // Spaces keep the JSON valid and put the tensor data on an 8-byte boundary.
  header_text.append((8 - header_text.size() % 8) % 8, ' ');

  FILE* out = std::fopen(path.c_str(), "wb");
  if (out == nullptr) {
    return absl::InternalError(absl::StrCat("cannot create ", path, ": ", std::strerror(errno)));
  }
  unsigned char length[8];
  uint64_t header_len = header_text.size();
  for (int i = 0; i < 8; ++i) length[i] = static_cast<unsigned char>(header_len >> (8 * i));
  bool ok = std::fwrite(length, 1, 8, out) == 8 &&
            std::fwrite(header_text.data(), 1, header_text.size(), out) == header_text.size();
  for (size_t i = 0; ok && i < sorted.size(); ++i) {
    const TensorView& view = sorted[i]->view;
    ok = view.nbytes == 0 || std::fwrite(view.data, 1, view.nbytes, out) == view.nbytes;
  }
  int write_errno = errno;
  if (std::fclose(out) != 0 && ok) {
    ok = false;
    write_errno = errno;
  }
  if (!ok) {
    return absl::InternalError(absl::StrCat("error writing ", path, ": ", std::strerror(write_errno)));
  }
  return absl::OkStatus();
}

}  // namespace squat
