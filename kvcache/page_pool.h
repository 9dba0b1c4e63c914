// The page pool: one device allocation split into fixed-size pages, a free list of page ids,
// and RAII leases that give pages back. Internal to kvcache/.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "absl/status/statusor.h"

namespace squat::kv {

class PagePool {
 public:
  // One uint8 allocation of page_bytes * total_pages on `device`.
  static absl::StatusOr<std::shared_ptr<PagePool>> Create(int64_t page_bytes, int64_t total_pages,
                                                          at::Device device);

  int64_t page_bytes() const { return page_bytes_; }
  int64_t total_pages() const { return total_pages_; }
  int64_t used_pages() const;
  int64_t free_pages() const { return total_pages_ - used_pages(); }
  at::Device device() const { return storage_.device(); }
  // Base of page 0 (the kernels address pages as data() + page * page_bytes()).
  const void* data() const { return storage_.data_ptr(); }

  // All or nothing: `count` page ids, or RESOURCE_EXHAUSTED leaving the pool unchanged.
  absl::StatusOr<std::vector<int64_t>> Allocate(int64_t count);
  void Release(const std::vector<int64_t>& pages);

  // `count` elements of `dtype` starting `byte_offset` bytes into page `page`: a view into the
  // pool (no copy). The offset must be aligned to the element size.
  at::Tensor View(int64_t page, int64_t byte_offset, int64_t count, at::ScalarType dtype) const;
  // The whole pool as a 1-D tensor of `dtype` (page p starts at element p * page_bytes /
  // element size; the page size must be a multiple of the element size).
  at::Tensor Typed(at::ScalarType dtype) const;

 private:
  PagePool(at::Tensor storage, int64_t page_bytes, int64_t total_pages);

  at::Tensor storage_;  // uint8 [total_pages * page_bytes]
  int64_t page_bytes_;
  int64_t total_pages_;
  mutable std::mutex mutex_;
  std::vector<int64_t> free_;  // LIFO stack of free page ids
  std::vector<bool> in_use_;   // catches double releases
};

// Pages held by one owner; they go back to the pool when the lease is destroyed. The lease
// keeps the pool alive, so owners may outlive the manager that created them.
class PageLease {
 public:
  PageLease() = default;
  PageLease(std::shared_ptr<PagePool> pool, std::vector<int64_t> pages);
  PageLease(PageLease&& other) noexcept;
  PageLease& operator=(PageLease&& other) noexcept;
  PageLease(const PageLease&) = delete;
  PageLease& operator=(const PageLease&) = delete;
  ~PageLease();

  const std::vector<int64_t>& pages() const { return pages_; }
  int64_t size() const { return static_cast<int64_t>(pages_.size()); }
  const PagePool& pool() const { return *pool_; }
  // Takes over `more`'s pages (same pool), appended after this lease's own: growth keeps the
  // logical order of the pages already written.
  void Append(PageLease&& more);
  // Gives every page back now.
  void Reset() { ReleaseAll(); }

 private:
  void ReleaseAll();

  std::shared_ptr<PagePool> pool_;
  std::vector<int64_t> pages_;
};

}  // namespace squat::kv
