// JsonFields: reads a JSON object into typed struct fields and rejects unknown keys, so a typo in
// a config ("lr_warmup" for "warmup_steps") is an error naming the key, not a silent default.
#pragma once

#include <nlohmann/json.hpp>
#include <set>
#include <string>

#include "core/status.h"

namespace grove {

class JsonFields {
 public:
  // `section` names the object in messages ("train", "model").
  JsonFields(const nlohmann::json& j, std::string section) : j_(j), section_(std::move(section)) {
    if (!j_.is_object()) error_ = "'" + section_ + "' must be a JSON object";
  }

  template <typename T>
  void get(const std::string& key, T* out) {
    known_.insert(key);
    if (!error_.empty() || !j_.contains(key)) return;
    try {
      *out = j_.at(key).get<T>();
    } catch (const nlohmann::json::exception&) {
      error_ = "config key '" + section_ + "." + key + "' has the wrong type (got " +
               j_.at(key).dump() + ")";
    }
  }

  // A string value turned into T by parse(value, "section.key") -> StatusOr<T> (the enums of
  // spec/enums.h); parse's error, which names the field and the accepted values, is kept.
  template <typename T, typename Parse>
  void get_parsed(const std::string& key, T* out, Parse parse) {
    known_.insert(key);
    if (!error_.empty() || !j_.contains(key)) return;
    const std::string field = section_ + "." + key;
    if (!j_.at(key).is_string()) {
      error_ = "config key '" + field + "' has the wrong type (got " + j_.at(key).dump() +
               ", expected a string)";
      return;
    }
    auto value = parse(j_.at(key).template get<std::string>(), field);
    if (value.ok())
      *out = value.value();
    else
      error_ = value.status().message();
  }

  // Error if a key was not asked for, or a value had the wrong type.
  Status finish() const {
    if (!error_.empty()) return Status::Error(error_);
    for (auto it = j_.begin(); it != j_.end(); ++it) {
      if (known_.count(it.key())) continue;
      std::string known;
      for (const auto& k : known_) known += (known.empty() ? "" : ", ") + k;
      return Status::Error("unknown config key '" + section_ + "." + it.key() +
                           "' (known keys in '" + section_ + "': " + known + ")");
    }
    return Status::Ok();
  }

 private:
  const nlohmann::json& j_;
  std::string section_;
  std::set<std::string> known_;
  std::string error_;
};

}  // namespace grove
