#include "kvcache/page_pool.h"

#include <c10/util/Exception.h>

#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace squat::kv {

absl::StatusOr<std::shared_ptr<PagePool>> PagePool::Create(int64_t page_bytes, int64_t total_pages,
                                                           at::Device device) {
  if (page_bytes <= 0 || total_pages <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("page pool: need a positive page size and page count, got ",
                                                   total_pages, " pages of ", page_bytes, " bytes"));
  }
  at::Tensor storage;
  try {
    storage = at::empty({page_bytes * total_pages}, at::TensorOptions().dtype(at::kByte).device(device));
  } catch (const c10::Error& e) {
    return absl::ResourceExhaustedError(absl::StrCat("page pool: cannot allocate ", page_bytes * total_pages,
                                                     " bytes on ", device.str(), ": ", e.what_without_backtrace()));
  }
  return std::shared_ptr<PagePool>(new PagePool(std::move(storage), page_bytes, total_pages));
}

PagePool::PagePool(at::Tensor storage, int64_t page_bytes, int64_t total_pages)
    : storage_(std::move(storage)), page_bytes_(page_bytes), total_pages_(total_pages),
      in_use_(total_pages, false) {
  // Reverse order so that the first allocations get the lowest page ids.
  free_.reserve(total_pages);
  for (int64_t p = total_pages - 1; p >= 0; --p) free_.push_back(p);
}

int64_t PagePool::used_pages() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return total_pages_ - static_cast<int64_t>(free_.size());
}

absl::StatusOr<std::vector<int64_t>> PagePool::Allocate(int64_t count) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (count < 0 || count > static_cast<int64_t>(free_.size())) {
    return absl::ResourceExhaustedError(absl::StrCat("KV cache pool: need ", count, " pages, ", free_.size(),
                                                     " of ", total_pages_, " free"));
  }
  std::vector<int64_t> pages(free_.end() - count, free_.end());
  free_.resize(free_.size() - count);
  for (int64_t p : pages) in_use_[p] = true;
  return pages;
}

void PagePool::Release(const std::vector<int64_t>& pages) {
  std::lock_guard<std::mutex> lock(mutex_);
  for (int64_t p : pages) {
    TORCH_CHECK(p >= 0 && p < total_pages_ && in_use_[p], "KV cache pool: page ", p, " released twice");
    in_use_[p] = false;
    free_.push_back(p);
  }
}

at::Tensor PagePool::View(int64_t page, int64_t byte_offset, int64_t count, at::ScalarType dtype) const {
  const int64_t element = static_cast<int64_t>(c10::elementSize(dtype));
  const int64_t start = page * page_bytes_ + byte_offset;
  TORCH_CHECK(page >= 0 && page < total_pages_ && byte_offset >= 0 &&
                  byte_offset + count * element <= page_bytes_,
              "KV cache pool: view [", byte_offset, ", +", count * element, ") of page ", page, " out of range");
  TORCH_CHECK(start % element == 0, "KV cache pool: misaligned ", dtype, " view at byte ", start);
  return storage_.narrow(0, start, count * element).view(dtype);
}

at::Tensor PagePool::Typed(at::ScalarType dtype) const {
  const int64_t element = static_cast<int64_t>(c10::elementSize(dtype));
  TORCH_CHECK(page_bytes_ % element == 0, "KV cache pool: pages of ", page_bytes_, " bytes are not whole ", dtype,
              " elements");
  return storage_.view(dtype);
}

PageLease::PageLease(std::shared_ptr<PagePool> pool, std::vector<int64_t> pages)
    : pool_(std::move(pool)), pages_(std::move(pages)) {}

PageLease::PageLease(PageLease&& other) noexcept
    : pool_(std::move(other.pool_)), pages_(std::move(other.pages_)) {
  other.pages_.clear();
}

PageLease& PageLease::operator=(PageLease&& other) noexcept {
  if (this != &other) {
    ReleaseAll();
    pool_ = std::move(other.pool_);
    pages_ = std::move(other.pages_);
    other.pages_.clear();
  }
  return *this;
}

PageLease::~PageLease() { ReleaseAll(); }

void PageLease::Append(PageLease&& more) {
  if (more.pages_.empty()) return;
  if (!pool_) pool_ = more.pool_;
  TORCH_CHECK(pool_ == more.pool_, "KV cache pool: cannot join leases of different pools");
  pages_.insert(pages_.end(), more.pages_.begin(), more.pages_.end());
  more.pages_.clear();
}

void PageLease::ReleaseAll() {
  if (pool_ && !pages_.empty()) pool_->Release(pages_);
  pages_.clear();
}

}  // namespace squat::kv
