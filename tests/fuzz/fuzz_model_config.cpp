// ParseModelConfig on arbitrary config.json text. Checks: an accepted config satisfies every
// invariant the model loader relies on (positive sizes, heads divisible, even head_dim,
// positive eps and theta, a known dtype).
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "runtime/checkpoint/model_config.h"
#include "tests/fuzz/fuzz_support.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto config = squat::ParseModelConfig(std::string_view(reinterpret_cast<const char*>(data), size));
  if (!config.ok()) {
    FUZZ_CHECK(!config.status().message().empty());
    return 0;
  }
  const squat::ModelConfig& c = *config;
  FUZZ_CHECK(c.vocab_size > 0 && c.hidden_size > 0 && c.intermediate_size > 0);
  FUZZ_CHECK(c.num_hidden_layers > 0 && c.num_attention_heads > 0 && c.num_key_value_heads > 0);
  FUZZ_CHECK(c.num_attention_heads % c.num_key_value_heads == 0);
  FUZZ_CHECK(c.head_dim > 0 && c.head_dim % 2 == 0);
  FUZZ_CHECK(c.max_position_embeddings > 0);
  FUZZ_CHECK(c.rms_norm_eps > 0 && c.rope_theta > 0);
  FUZZ_CHECK(c.torch_dtype == "float32" || c.torch_dtype == "float16" || c.torch_dtype == "bfloat16");
  if (c.rope_scaling.has_value()) FUZZ_CHECK(c.rope_scaling->factor > 0);
  for (int32_t id : c.eos_token_ids) FUZZ_CHECK(id >= 0);
  if (c.bos_token_id.has_value()) FUZZ_CHECK(*c.bos_token_id >= 0);
  return 0;
}
