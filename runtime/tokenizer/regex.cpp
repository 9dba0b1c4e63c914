#include "runtime/tokenizer/regex.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "absl/strings/str_cat.h"
#include "runtime/tokenizer/json.h"
#include "runtime/tokenizer/utf8.h"

namespace squat::tokenizer_internal {
namespace {

pcre2_code* Code(void* code) { return static_cast<pcre2_code*>(code); }

struct MatchDataDeleter {
  void operator()(pcre2_match_data* data) const { pcre2_match_data_free(data); }
};

}  // namespace

absl::StatusOr<std::shared_ptr<const Regex>> Regex::Compile(std::string_view pattern,
                                                            std::string_view what) {
  int error_code = 0;
  PCRE2_SIZE error_offset = 0;
  pcre2_code* code =
      pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                    PCRE2_UTF | PCRE2_UCP, &error_code, &error_offset, nullptr);
  if (code == nullptr) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error_code, message, sizeof(message));
    return SpecError(what, absl::StrCat("bad regex '", AsAbsl(pattern), "' at offset ",
                                        error_offset, ": ",
                                        reinterpret_cast<const char*>(message)));
  }
  // JIT is an optimisation only: without it (or if it fails) the interpreter is used.
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
  return std::shared_ptr<const Regex>(new Regex(code));
}

Regex::~Regex() { pcre2_code_free(Code(code_)); }

bool Regex::MatchAt(std::string_view text, size_t offset, uint32_t options, void* match_data,
                    ByteRange* match) const {
  auto* data = static_cast<pcre2_match_data*>(match_data);
  // Callers pass valid UTF-8 and offsets on character boundaries, so skip PCRE2's O(n)
  // validation, which would make FindAll quadratic.
  int rc = pcre2_match(Code(code_), reinterpret_cast<PCRE2_SPTR>(text.data()), text.size(),
                       offset, options | PCRE2_NO_UTF_CHECK, data, nullptr);
  if (rc == PCRE2_ERROR_JIT_STACKLIMIT) {
    // The JIT's machine stack is small; the interpreter keeps its backtracking on the heap.
    rc = pcre2_match(Code(code_), reinterpret_cast<PCRE2_SPTR>(text.data()), text.size(), offset,
                     options | PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, data, nullptr);
  }
  if (rc < 0) return false;
  PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(data);
  *match = {ovector[0], ovector[1]};
  return true;
}

std::vector<ByteRange> Regex::FindAll(std::string_view text) const {
  std::vector<ByteRange> matches;
  std::unique_ptr<pcre2_match_data, MatchDataDeleter> data(
      pcre2_match_data_create_from_pattern(Code(code_), nullptr));
  size_t offset = 0;
  ByteRange match;
  while (offset <= text.size() && MatchAt(text, offset, 0, data.get(), &match)) {
    if (match.second > match.first) {
      matches.push_back(match);
      offset = match.second;
    } else {
      // Empty match: step over one character so that the scan always advances.
      if (match.first >= text.size()) break;
      offset = match.first + DecodeUtf8(text, match.first).length;
    }
  }
  return matches;
}

bool Regex::MatchesWhole(std::string_view text) const {
  std::unique_ptr<pcre2_match_data, MatchDataDeleter> data(
      pcre2_match_data_create_from_pattern(Code(code_), nullptr));
  ByteRange match;
  return MatchAt(text, 0, PCRE2_ANCHORED | PCRE2_ENDANCHORED, data.get(), &match);
}

std::vector<ByteRange> FindAllLiteral(std::string_view text, std::string_view literal) {
  std::vector<ByteRange> matches;
  if (literal.empty()) return matches;
  for (size_t pos = text.find(literal); pos != std::string_view::npos;
       pos = text.find(literal, pos + literal.size())) {
    matches.emplace_back(pos, pos + literal.size());
  }
  return matches;
}

}  // namespace squat::tokenizer_internal
