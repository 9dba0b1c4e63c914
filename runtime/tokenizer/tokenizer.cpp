// Hugging Face tokenizer.json: the encode / decode pipeline that ties the sections together
// (added tokens -> normalizer -> pre-tokenizer -> BPE -> post-processor; ids -> decoder), and
// the streaming decoder.
#include "runtime/tokenizer/tokenizer.h"

#include <fstream>
#include <sstream>
#include <unordered_map>
#include <utility>

#include "absl/strings/str_cat.h"
#include "runtime/tokenizer/added_tokens.h"
#include "runtime/tokenizer/bpe.h"
#include "runtime/tokenizer/decoders.h"
#include "runtime/tokenizer/json.h"
#include "runtime/tokenizer/normalizers.h"
#include "runtime/tokenizer/post_processor.h"
#include "runtime/tokenizer/pre_tokenizers.h"
#include "runtime/tokenizer/utf8.h"

namespace squat {
namespace {

using tokenizer_internal::AddedToken;
using tokenizer_internal::AddedTokenMatcher;
using tokenizer_internal::BpeModel;
using tokenizer_internal::Decoder;
using tokenizer_internal::Json;
using tokenizer_internal::Normalizer;
using tokenizer_internal::PostProcessor;
using tokenizer_internal::PreToken;
using tokenizer_internal::PreTokenizer;
using tokenizer_internal::SpecError;

class HfTokenizer final : public Tokenizer {
 public:
  static absl::StatusOr<std::unique_ptr<HfTokenizer>> Create(const Json& root);

  std::vector<int32_t> Encode(std::string_view text, bool add_special_tokens) const override;
  std::string Decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const override;
  int32_t vocab_size() const override { return vocab_size_; }
  std::optional<int32_t> TokenToId(std::string_view token) const override;
  std::string IdToToken(int32_t id) const override;
  bool IsSpecial(int32_t id) const override;

  // Whether text decoded up to and including this token can still change when more tokens
  // follow (a ByteFallback byte run is only valid or not as a whole).
  bool MayChangeAfter(int32_t id) const;

 private:
  const AddedToken* FindAdded(int32_t id) const;
  const std::string* TokenText(int32_t id) const;
  // Normalized text (no added tokens in it) -> pre-tokens -> BPE ids.
  void EncodePlainText(std::string text, bool at_input_start, std::vector<int32_t>& ids) const;

  std::unique_ptr<BpeModel> model_;
  std::unique_ptr<Normalizer> normalizer_;
  std::unique_ptr<PreTokenizer> pre_tokenizer_;
  std::unique_ptr<PostProcessor> post_processor_;
  std::unique_ptr<Decoder> decoder_;
  std::vector<AddedToken> added_tokens_;
  std::unordered_map<int32_t, size_t> added_by_id_;
  std::unordered_map<std::string, int32_t> added_by_content_;
  std::unique_ptr<AddedTokenMatcher> raw_matcher_;         // normalized == false tokens
  std::unique_ptr<AddedTokenMatcher> normalized_matcher_;  // normalized == true tokens
  int32_t vocab_size_ = 0;
};

absl::StatusOr<std::unique_ptr<HfTokenizer>> HfTokenizer::Create(const Json& root) {
  if (!root.is_object()) return SpecError("top level", "must be a JSON object");
  auto tokenizer = std::make_unique<HfTokenizer>();

  const Json* model = tokenizer_internal::OptionalField(root, "model");
  if (model == nullptr || !model->is_object()) return SpecError("model", "missing or not an object");
  // HF accepts a model without "type" and infers it; only BPE has merges.
  std::string model_type = model->contains("type") ? model->value("type", std::string("?"))
                           : model->contains("merges") ? "BPE"
                                                       : "?";
  if (model_type != "BPE") {
    return SpecError("model", "unsupported model type '" + model_type + "' (only BPE)");
  }
  auto bpe = BpeModel::FromJson(*model);
  if (!bpe.ok()) return bpe.status();
  tokenizer->model_ = *std::move(bpe);

  auto section = [&](const char* key) -> const Json& {
    static const Json kNull;
    const Json* field = tokenizer_internal::OptionalField(root, key);
    return field == nullptr ? kNull : *field;
  };
  auto normalizer = tokenizer_internal::ParseNormalizer(section("normalizer"));
  if (!normalizer.ok()) return normalizer.status();
  tokenizer->normalizer_ = *std::move(normalizer);
  auto pre_tokenizer = tokenizer_internal::ParsePreTokenizer(section("pre_tokenizer"));
  if (!pre_tokenizer.ok()) return pre_tokenizer.status();
  tokenizer->pre_tokenizer_ = *std::move(pre_tokenizer);
  auto post_processor = tokenizer_internal::ParsePostProcessor(section("post_processor"));
  if (!post_processor.ok()) return post_processor.status();
  tokenizer->post_processor_ = *std::move(post_processor);
  auto decoder = tokenizer_internal::ParseDecoder(section("decoder"));
  if (!decoder.ok()) return decoder.status();
  tokenizer->decoder_ = *std::move(decoder);

  auto added = tokenizer_internal::ParseAddedTokens(section("added_tokens"));
  if (!added.ok()) return added.status();
  tokenizer->added_tokens_ = *std::move(added);
  int32_t max_id = tokenizer->model_->max_id();
  std::vector<AddedTokenMatcher::Pattern> raw_patterns, normalized_patterns;
  for (size_t i = 0; i < tokenizer->added_tokens_.size(); ++i) {
    const AddedToken& token = tokenizer->added_tokens_[i];
    tokenizer->added_by_id_[token.id] = i;
    tokenizer->added_by_content_[token.content] = token.id;
    max_id = std::max(max_id, token.id);
    if (token.normalized) {
      // HF matches these in normalized text, against their normalized content.
      std::string text = tokenizer->normalizer_ ? tokenizer->normalizer_->Normalize(token.content)
                                                : token.content;
      normalized_patterns.push_back({std::move(text), &token});
    } else {
      raw_patterns.push_back({token.content, &token});
    }
  }
  tokenizer->raw_matcher_ = std::make_unique<AddedTokenMatcher>(std::move(raw_patterns));
  tokenizer->normalized_matcher_ =
      std::make_unique<AddedTokenMatcher>(std::move(normalized_patterns));
  tokenizer->vocab_size_ = max_id + 1;
  // The template's ids go to the model like any other: each must name a token (found by
  // fuzzing: a template id outside the vocabulary reached Encode's output).
  if (tokenizer->post_processor_) {
    for (int32_t id : tokenizer->post_processor_->Process({})) {
      if (tokenizer->FindAdded(id) == nullptr && tokenizer->model_->IdToToken(id) == nullptr) {
        return SpecError("post_processor",
                         "special token id " + std::to_string(id) + " is not in the vocabulary");
      }
    }
  }
  return tokenizer;
}

void HfTokenizer::EncodePlainText(std::string text, bool at_input_start,
                                  std::vector<int32_t>& ids) const {
  if (text.empty()) return;
  std::vector<PreToken> pieces;
  pieces.push_back({std::move(text), at_input_start});
  if (pre_tokenizer_) pre_tokenizer_->Split(pieces);
  for (const PreToken& piece : pieces) model_->Tokenize(piece.text, ids);
}

std::vector<int32_t> HfTokenizer::Encode(std::string_view input, bool add_special_tokens) const {
  // HF only ever sees valid Unicode strings; map stray bytes the way a lossy decode would.
  const std::string text = tokenizer_internal::ToValidUtf8(input);
  std::vector<int32_t> ids;
  for (const AddedTokenMatcher::Segment& segment : raw_matcher_->Split(text)) {
    if (segment.id >= 0) {
      ids.push_back(segment.id);
      continue;
    }
    std::string piece = text.substr(segment.begin, segment.end - segment.begin);
    if (normalizer_) piece = normalizer_->Normalize(std::move(piece));
    const bool at_input_start = segment.begin == 0;
    if (normalized_matcher_->empty()) {
      EncodePlainText(std::move(piece), at_input_start, ids);
      continue;
    }
    for (const AddedTokenMatcher::Segment& sub : normalized_matcher_->Split(piece)) {
      if (sub.id >= 0) {
        ids.push_back(sub.id);
      } else {
        EncodePlainText(piece.substr(sub.begin, sub.end - sub.begin),
                        at_input_start && sub.begin == 0, ids);
      }
    }
  }
  if (add_special_tokens && post_processor_) ids = post_processor_->Process(std::move(ids));
  return ids;
}

std::string HfTokenizer::Decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    if (const AddedToken* added = FindAdded(id)) {
      if (!(skip_special_tokens && added->special)) tokens.push_back(added->content);
    } else if (const std::string* token = model_->IdToToken(id)) {
      tokens.push_back(*token);
    }  // unknown ids are dropped, as in HF
  }
  std::string text;
  if (decoder_) {
    decoder_->DecodeChain(tokens);
    for (const std::string& token : tokens) text += token;
  } else {
    for (size_t i = 0; i < tokens.size(); ++i) absl::StrAppend(&text, i ? " " : "", tokens[i]);
  }
  return tokenizer_internal::ToValidUtf8(text);
}

const AddedToken* HfTokenizer::FindAdded(int32_t id) const {
  auto it = added_by_id_.find(id);
  return it == added_by_id_.end() ? nullptr : &added_tokens_[it->second];
}

const std::string* HfTokenizer::TokenText(int32_t id) const {
  if (const AddedToken* added = FindAdded(id)) return &added->content;
  return model_->IdToToken(id);
}

std::optional<int32_t> HfTokenizer::TokenToId(std::string_view token) const {
  if (auto it = added_by_content_.find(std::string(token)); it != added_by_content_.end()) {
    return it->second;
  }
  return model_->TokenToId(token);
}

std::string HfTokenizer::IdToToken(int32_t id) const {
  const std::string* text = TokenText(id);
  return text == nullptr ? std::string() : *text;
}

bool HfTokenizer::IsSpecial(int32_t id) const {
  const AddedToken* added = FindAdded(id);
  return added != nullptr && added->special;
}

bool HfTokenizer::MayChangeAfter(int32_t id) const {
  const std::string* text = TokenText(id);
  return decoder_ && text != nullptr && decoder_->MayChangeAfter(*text);
}

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromJson(std::string_view json_text) {
  Json root = Json::parse(json_text.begin(), json_text.end(), nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded()) return SpecError("top level", "malformed JSON");
  try {
    auto tokenizer = HfTokenizer::Create(root);
    if (!tokenizer.ok()) return tokenizer.status();
    return std::unique_ptr<Tokenizer>(*std::move(tokenizer));
  } catch (const Json::exception& e) {
    // A field of an unexpected JSON type that the checks above did not anticipate.
    return SpecError("unexpected value", e.what());
  }
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromFile(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) return absl::NotFoundError(absl::StrCat("cannot open tokenizer file '", path, "'"));
  std::ostringstream contents;
  contents << file.rdbuf();
  auto tokenizer = FromJson(contents.str());
  if (!tokenizer.ok()) {
    return absl::Status(tokenizer.status().code(),
                        absl::StrCat(path, ": ", tokenizer.status().message()));
  }
  return tokenizer;
}

// ---- StreamingDecoder ------------------------------------------------------------------------
//
// The window scheme of HF's incremental detokenizers: ids_[prefix_offset_, read_offset_) is the
// span whose text was emitted last; decoding it together with the newer ids and subtracting its
// own decoding gives the new text with the spacing a full Decode would give (the Llama-2
// leading-space Strip, Metaspace's first-token rule). Text is held back while it ends in an
// incomplete character (U+FFFD) or in a byte-fallback token whose run may still turn invalid.

namespace {

bool MayChangeAfter(const Tokenizer& tokenizer, int32_t id) {
  if (const auto* hf = dynamic_cast<const HfTokenizer*>(&tokenizer)) return hf->MayChangeAfter(id);
  return tokenizer_internal::ByteFallbackValue(tokenizer.IdToToken(id)) >= 0;
}

// Whether the last id that contributes text (skipping ids Decode drops) may still change.
bool TailMayChange(const Tokenizer& tokenizer, const std::vector<int32_t>& ids,
                   bool skip_special_tokens) {
  for (auto it = ids.rbegin(); it != ids.rend(); ++it) {
    bool dropped = tokenizer.IdToToken(*it).empty() ||
                   (skip_special_tokens && tokenizer.IsSpecial(*it));
    if (!dropped) return MayChangeAfter(tokenizer, *it);
  }
  return false;
}

// Returns the text completed since the last emission and moves the window; with `final`,
// everything still held back is returned.
std::string Advance(const Tokenizer& tokenizer, bool skip_special_tokens, bool final,
                    std::vector<int32_t>& ids, size_t& prefix_offset, size_t& read_offset) {
  std::vector<int32_t> window(ids.begin() + prefix_offset, ids.end());
  std::string new_text = tokenizer.Decode(window, skip_special_tokens);
  window.resize(read_offset - prefix_offset);
  std::string prefix_text = tokenizer.Decode(window, skip_special_tokens);

  if (new_text.size() <= prefix_text.size()) return "";
  if (!final && tokenizer_internal::EndsWithReplacementChar(new_text)) return "";
  if (new_text.compare(0, prefix_text.size(), prefix_text) != 0 && !final) return "";
  std::string delta = new_text.substr(prefix_text.size());
  // The next window starts at the ids just emitted; older ids are no longer needed.
  ids.erase(ids.begin(), ids.begin() + read_offset);
  prefix_offset = 0;
  read_offset = ids.size();
  return delta;
}

}  // namespace

StreamingDecoder::StreamingDecoder(const Tokenizer& tokenizer, bool skip_special_tokens)
    : tokenizer_(tokenizer), skip_special_tokens_(skip_special_tokens) {}

std::string StreamingDecoder::Push(int32_t id) {
  ids_.push_back(id);
  if (TailMayChange(tokenizer_, ids_, skip_special_tokens_)) return "";
  return Advance(tokenizer_, skip_special_tokens_, /*final=*/false, ids_, prefix_offset_,
                 read_offset_);
}

std::string StreamingDecoder::Flush() {
  return Advance(tokenizer_, skip_special_tokens_, /*final=*/true, ids_, prefix_offset_,
                 read_offset_);
}

}  // namespace squat
