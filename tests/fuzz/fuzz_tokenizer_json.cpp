// Tokenizer::FromJson on arbitrary tokenizer.json text: it must return an error or a
// tokenizer that encodes and decodes, never crash, throw or hang.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "runtime/tokenizer/tokenizer.h"
#include "tests/fuzz/fuzz_support.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view json(reinterpret_cast<const char*>(data), size);
  auto tokenizer = squat::Tokenizer::FromJson(json);
  if (!tokenizer.ok()) {
    FUZZ_CHECK(!tokenizer.status().message().empty());
    return 0;
  }
  const squat::Tokenizer& t = **tokenizer;
  for (std::string_view text : {"Hello world", " the cat  sat\n", "caf\xc3\xa9 \xf0\x9f\x98\x80", "\xff\xfe"}) {
    for (bool add_special : {false, true}) {
      const auto ids = t.Encode(text, add_special);
      for (int32_t id : ids) FUZZ_CHECK(id >= 0 && id < t.vocab_size());
      FUZZ_CHECK(squat::fuzz::IsWellFormedUtf8(t.Decode(ids, false)));
    }
  }
  return 0;
}
