#include "runtime/tokenizer/post_processor.h"

#include <utility>

namespace squat::tokenizer_internal {
namespace {

// One element of a single-sequence template: either the sequence itself or fixed ids.
struct TemplatePart {
  bool is_sequence;
  std::vector<int32_t> ids;
};

class TemplatePostProcessor : public PostProcessor {
 public:
  explicit TemplatePostProcessor(std::vector<TemplatePart> parts) : parts_(std::move(parts)) {}
  std::vector<int32_t> Process(std::vector<int32_t> ids) const override {
    std::vector<int32_t> out;
    out.reserve(ids.size() + 4);
    for (const TemplatePart& part : parts_) {
      const std::vector<int32_t>& source = part.is_sequence ? ids : part.ids;
      out.insert(out.end(), source.begin(), source.end());
    }
    return out;
  }

 private:
  std::vector<TemplatePart> parts_;
};

class IdentityPostProcessor : public PostProcessor {
 public:
  std::vector<int32_t> Process(std::vector<int32_t> ids) const override { return ids; }
};

class SequencePostProcessor : public PostProcessor {
 public:
  explicit SequencePostProcessor(std::vector<std::unique_ptr<PostProcessor>> steps)
      : steps_(std::move(steps)) {}
  std::vector<int32_t> Process(std::vector<int32_t> ids) const override {
    for (const auto& step : steps_) ids = step->Process(std::move(ids));
    return ids;
  }

 private:
  std::vector<std::unique_ptr<PostProcessor>> steps_;
};

absl::StatusOr<std::unique_ptr<PostProcessor>> ParseTemplate(const Json& spec,
                                                             std::string_view where) {
  const Json* single = OptionalField(spec, "single");
  if (single == nullptr || !single->is_array()) return SpecError(where, "'single' must be a list");
  const Json* specials = OptionalField(spec, "special_tokens");
  std::vector<TemplatePart> parts;
  for (const Json& item : *single) {
    if (const Json* sequence = OptionalField(item, "Sequence")) {
      const Json* id = OptionalField(*sequence, "id");
      if (id == nullptr || *id != "A") {
        return SpecError(where, "a single-sequence template may only use sequence \"A\"");
      }
      parts.push_back({true, {}});
    } else if (const Json* special = OptionalField(item, "SpecialToken")) {
      auto name = StringField(*special, "id", where);
      if (!name.ok()) return name.status();
      const Json* entry = specials == nullptr ? nullptr : OptionalField(*specials, name->c_str());
      const Json* ids = entry == nullptr ? nullptr : OptionalField(*entry, "ids");
      if (ids == nullptr || !ids->is_array()) {
        return SpecError(where, "special token '" + *name + "' has no ids in 'special_tokens'");
      }
      TemplatePart part{false, {}};
      for (const Json& id : *ids) {
        if (!id.is_number_integer()) return SpecError(where, "special token ids must be integers");
        part.ids.push_back(id.get<int32_t>());
      }
      parts.push_back(std::move(part));
    } else {
      return SpecError(where, "template items must be {\"Sequence\": ...} or {\"SpecialToken\": ...}");
    }
  }
  return std::make_unique<TemplatePostProcessor>(std::move(parts));
}

// BertProcessing / RobertaProcessing: [cls] A [sep], with "cls": ["[CLS]", 101].
absl::StatusOr<std::unique_ptr<PostProcessor>> ParseClsSep(const Json& spec,
                                                           std::string_view where) {
  std::vector<TemplatePart> parts;
  for (const char* key : {"cls", "sep"}) {
    const Json* pair = OptionalField(spec, key);
    if (pair == nullptr || !pair->is_array() || pair->size() != 2 ||
        !(*pair)[1].is_number_integer()) {
      return SpecError(where, absl::StrCat("'", key, "' must be [token, id]"));
    }
    parts.push_back({false, {(*pair)[1].get<int32_t>()}});
    if (parts.size() == 1) parts.push_back({true, {}});
  }
  return std::make_unique<TemplatePostProcessor>(std::move(parts));
}

}  // namespace

absl::StatusOr<std::unique_ptr<PostProcessor>> ParsePostProcessor(const Json& spec) {
  if (spec.is_null()) return nullptr;
  auto type = TypeOf(spec, "post_processor");
  if (!type.ok()) return type.status();
  const std::string where = "post_processor " + *type;

  if (*type == "TemplateProcessing") return ParseTemplate(spec, where);
  if (*type == "BertProcessing" || *type == "RobertaProcessing") return ParseClsSep(spec, where);
  if (*type == "ByteLevel") return std::make_unique<IdentityPostProcessor>();
  if (*type == "Sequence") {
    const Json* list = OptionalField(spec, "processors");
    if (list == nullptr || !list->is_array()) {
      return SpecError(where, "'processors' must be a list");
    }
    std::vector<std::unique_ptr<PostProcessor>> steps;
    for (const Json& item : *list) {
      auto step = ParsePostProcessor(item);
      if (!step.ok()) return step.status();
      if (*step) steps.push_back(*std::move(step));
    }
    return std::make_unique<SequencePostProcessor>(std::move(steps));
  }
  return SpecError("post_processor", "unsupported type '" + *type + "'");
}

}  // namespace squat::tokenizer_internal
