#include "server/proto_conversion.h"

#include <algorithm>
#include <cstdint>

namespace squat::server {

GenerateRequest ToEngineRequest(const v1::GenerateRequest& request, const std::string& request_id) {
  GenerateRequest out;
  out.request_id = request_id;
  if (request.prompt_case() == v1::GenerateRequest::kTokenIds) {
    const auto& ids = request.token_ids().ids();
    out.prompt_token_ids.assign(ids.begin(), ids.end());
  } else {
    out.prompt = request.text();
  }
  out.add_special_tokens = !request.has_add_special_tokens() || request.add_special_tokens();

  const v1::SamplingParams& in = request.sampling();
  SamplingParams& sampling = out.sampling;
  // Beyond int32 is beyond any limit; saturating keeps it refused rather than wrapped to "unset".
  sampling.max_tokens = static_cast<int32_t>(std::min<uint32_t>(in.max_tokens(), INT32_MAX));
  sampling.temperature = in.has_temperature() ? in.temperature() : 1.0f;
  sampling.top_k = static_cast<int32_t>(in.top_k());
  sampling.top_p = in.has_top_p() ? in.top_p() : 1.0f;
  sampling.min_p = in.min_p();
  sampling.repetition_penalty = in.has_repetition_penalty() ? in.repetition_penalty() : 1.0f;
  sampling.presence_penalty = in.presence_penalty();
  sampling.frequency_penalty = in.frequency_penalty();
  sampling.has_seed = in.has_seed();
  sampling.seed = in.seed();
  sampling.stop.assign(in.stop().begin(), in.stop().end());
  sampling.stop_token_ids.assign(in.stop_token_ids().begin(), in.stop_token_ids().end());
  sampling.ignore_eos = in.ignore_eos();
  sampling.logprobs = static_cast<int32_t>(in.logprobs());

  out.kv_method = request.kv_cache().method();
  out.k_bits = static_cast<int32_t>(request.kv_cache().k_bits());
  out.v_bits = static_cast<int32_t>(request.kv_cache().v_bits());
  return out;
}

v1::FinishReason ToProtoFinishReason(FinishReason reason) {
  switch (reason) {
    case FinishReason::kLength: return v1::FINISH_REASON_LENGTH;
    case FinishReason::kStop: return v1::FINISH_REASON_STOP;
    case FinishReason::kEos: return v1::FINISH_REASON_EOS;
    case FinishReason::kCancelled: return v1::FINISH_REASON_CANCELLED;
    case FinishReason::kError: return v1::FINISH_REASON_ERROR;
    case FinishReason::kNone: break;
  }
  return v1::FINISH_REASON_UNSPECIFIED;
}

void FillUsage(const GenerationEvent& final_event, v1::Usage* usage) {
  usage->set_prompt_tokens(static_cast<uint32_t>(final_event.prompt_tokens));
  usage->set_completion_tokens(static_cast<uint32_t>(final_event.completion_tokens));
}

void FillTimings(const Timings& timings, v1::Timings* proto) {
  proto->set_queue_seconds(timings.queue_seconds);
  proto->set_time_to_first_token_seconds(timings.time_to_first_token_seconds);
  proto->set_total_seconds(timings.total_seconds);
}

void FillModelInfo(const ModelDescription& d, const KvPoolUsage& pool, v1::ModelInfo* info) {
  info->set_model_name(d.model_name);
  info->set_model_dir(d.model_dir);
  info->set_architecture(d.architecture);
  info->set_vocab_size(static_cast<uint32_t>(d.vocab_size));
  info->set_hidden_size(static_cast<uint32_t>(d.hidden_size));
  info->set_num_layers(static_cast<uint32_t>(d.num_layers));
  info->set_num_attention_heads(static_cast<uint32_t>(d.num_attention_heads));
  info->set_num_key_value_heads(static_cast<uint32_t>(d.num_key_value_heads));
  info->set_head_dim(static_cast<uint32_t>(d.head_dim));
  info->set_max_model_len(static_cast<uint32_t>(d.max_model_len));
  info->set_dtype(d.dtype);
  info->set_device(d.device);
  info->set_weight_bytes(static_cast<uint64_t>(d.weight_bytes));
  info->set_workspace_bytes(static_cast<uint64_t>(d.workspace_bytes));
  for (int32_t id : d.eos_token_ids) info->add_eos_token_ids(id);
  info->set_kv_pool_bytes(static_cast<uint64_t>(pool.page_bytes * pool.total_pages));
  info->set_kv_page_bytes(static_cast<uint64_t>(pool.page_bytes));
  info->set_kv_pool_used_bytes(static_cast<uint64_t>(pool.page_bytes * pool.used_pages));
  for (const KvFormatDescription& format : d.kv_formats) {
    v1::KvFormatInfo* out = info->add_kv_formats();
    out->set_method(format.method);
    out->set_k_bits(static_cast<uint32_t>(format.k_bits));
    out->set_v_bits(static_cast<uint32_t>(format.v_bits));
    out->set_bytes_per_token(format.bytes_per_token);
    out->set_capacity_tokens(format.capacity_tokens);
    out->set_is_default(format.is_default);
  }
}

}  // namespace squat::server
