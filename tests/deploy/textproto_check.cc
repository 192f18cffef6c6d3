// textproto_check: parses text-format configuration files as the fedtune.v1 message named by their
// "# proto-message: fedtune.v1.Name" header line, with the generated descriptors of fedtune_protos (the schemas the
// programs use). Used by tests/deploy for deploy/examples/, deploy/docker/compose/ and the configs embedded in the
// Kubernetes manifests.
//
// Usage: textproto_check [--example] FILE...
//   --example  also require, recursively through nested messages, that every field is either set or named as a word
//              in a comment line (an example documents every field), and that every set field whose schema declares
//              a default holds exactly that default (an example shows the defaults).
// Prints one line per problem ("FILE:LINE:COL: ..." for parse errors) and "N passed, M failed"; exit status 0 when
// every file passed, 1 otherwise, 2 for bad usage.
#include <cstdio>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "fedtune/v1/federation_config.pb.h"
#include "fedtune/v1/finetune.pb.h"
#include "fedtune/v1/synth_profile.pb.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/dynamic_message.h"
#include "google/protobuf/io/tokenizer.h"
#include "google/protobuf/message.h"
#include "google/protobuf/text_format.h"

namespace {

namespace pb = google::protobuf;

class CollectErrors : public pb::io::ErrorCollector {
 public:
  explicit CollectErrors(std::string file) : file_(std::move(file)) {}
  void AddError(int line, pb::io::ColumnNumber column, const std::string& message) override {
    errors_.push_back(file_ + ":" + std::to_string(line + 1) + ":" + std::to_string(column + 1) + ": " + message);
  }
  void AddWarning(int line, pb::io::ColumnNumber column, const std::string& message) override {
    AddError(line, column, "warning: " + message);
  }
  const std::vector<std::string>& errors() const { return errors_; }

 private:
  std::string file_;
  std::vector<std::string> errors_;
};

// Words that appear in the file's comment lines (text after '#').
std::set<std::string> CommentWords(const std::string& text) {
  std::set<std::string> words;
  std::istringstream in(text);
  std::string line;
  static const std::regex kWord("[A-Za-z_][A-Za-z0-9_]*");
  while (std::getline(in, line)) {
    // A '#' inside a quoted string is not a comment; the examples keep '#' out of strings.
    const size_t hash = line.find('#');
    if (hash == std::string::npos) continue;
    const std::string comment = line.substr(hash + 1);
    for (std::sregex_iterator it(comment.begin(), comment.end(), kWord), end; it != end; ++it) words.insert(it->str());
  }
  return words;
}

// Returns "" when the set field holds its declared default (or declares none), else a description of the difference.
std::string DefaultMismatch(const pb::Message& m, const pb::FieldDescriptor* f) {
  if (!f->has_default_value() || f->is_repeated()) return "";
  const pb::Reflection* r = m.GetReflection();
  std::string actual;
  std::string expected;
  switch (f->cpp_type()) {
    case pb::FieldDescriptor::CPPTYPE_INT32:
      actual = std::to_string(r->GetInt32(m, f));
      expected = std::to_string(f->default_value_int32());
      break;
    case pb::FieldDescriptor::CPPTYPE_INT64:
      actual = std::to_string(r->GetInt64(m, f));
      expected = std::to_string(f->default_value_int64());
      break;
    case pb::FieldDescriptor::CPPTYPE_UINT32:
      actual = std::to_string(r->GetUInt32(m, f));
      expected = std::to_string(f->default_value_uint32());
      break;
    case pb::FieldDescriptor::CPPTYPE_UINT64:
      actual = std::to_string(r->GetUInt64(m, f));
      expected = std::to_string(f->default_value_uint64());
      break;
    case pb::FieldDescriptor::CPPTYPE_DOUBLE:
      if (r->GetDouble(m, f) == f->default_value_double()) return "";
      actual = std::to_string(r->GetDouble(m, f));
      expected = std::to_string(f->default_value_double());
      break;
    case pb::FieldDescriptor::CPPTYPE_FLOAT:
      if (r->GetFloat(m, f) == f->default_value_float()) return "";
      actual = std::to_string(r->GetFloat(m, f));
      expected = std::to_string(f->default_value_float());
      break;
    case pb::FieldDescriptor::CPPTYPE_BOOL:
      actual = r->GetBool(m, f) ? "true" : "false";
      expected = f->default_value_bool() ? "true" : "false";
      break;
    case pb::FieldDescriptor::CPPTYPE_STRING:
      actual = "\"" + r->GetString(m, f) + "\"";
      expected = "\"" + f->default_value_string() + "\"";
      break;
    case pb::FieldDescriptor::CPPTYPE_ENUM:
      actual = r->GetEnum(m, f)->name();
      expected = f->default_value_enum()->name();
      break;
    case pb::FieldDescriptor::CPPTYPE_MESSAGE:
      return "";
  }
  return actual == expected ? "" : "holds " + actual + " but the schema's default is " + expected;
}

// Appends to `problems` every field of `m` (recursively) that is neither set nor named in a comment, and every set
// field that differs from its declared default.
void CheckExample(const pb::Message& m, const std::string& path, const std::set<std::string>& comment_words,
                  std::vector<std::string>* problems) {
  const pb::Descriptor* d = m.GetDescriptor();
  const pb::Reflection* r = m.GetReflection();
  for (int i = 0; i < d->field_count(); ++i) {
    const pb::FieldDescriptor* f = d->field(i);
    const std::string name = path + f->name();
    const bool set = f->is_repeated() ? r->FieldSize(m, f) > 0 : r->HasField(m, f);
    if (!set) {
      if (comment_words.count(f->name()) == 0) problems->push_back("field " + name + " is neither set nor documented");
      continue;
    }
    if (f->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE) {
      if (!f->is_repeated()) CheckExample(r->GetMessage(m, f), name + ".", comment_words, problems);
      continue;
    }
    if (std::string mismatch = DefaultMismatch(m, f); !mismatch.empty()) {
      problems->push_back("field " + name + " " + mismatch);
    }
  }
}

// Returns the problems of one file (empty: it passed).
std::vector<std::string> CheckFile(const std::string& path, bool example) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return {path + ": cannot open"};
  std::stringstream buffer;
  buffer << in.rdbuf();
  const std::string text = buffer.str();

  std::smatch match;
  static const std::regex kHeader("(^|\n)#\\s*proto-message:\\s*([A-Za-z0-9_.]+)");
  if (!std::regex_search(text, match, kHeader)) {
    return {path + ": no \"# proto-message: fedtune.v1.Name\" header line"};
  }
  const std::string type = match[2].str();
  const pb::Descriptor* descriptor = pb::DescriptorPool::generated_pool()->FindMessageTypeByName(type);
  if (descriptor == nullptr) return {path + ": unknown message type " + type};
  std::unique_ptr<pb::Message> message(pb::MessageFactory::generated_factory()->GetPrototype(descriptor)->New());

  CollectErrors errors(path);
  pb::TextFormat::Parser parser;
  parser.RecordErrorsTo(&errors);
  if (!parser.ParseFromString(text, message.get())) {
    std::vector<std::string> problems = errors.errors();
    if (problems.empty()) problems.push_back(path + ": does not parse as " + type);
    return problems;
  }
  std::vector<std::string> problems;
  if (example) {
    std::vector<std::string> field_problems;
    CheckExample(*message, "", CommentWords(text), &field_problems);
    for (const std::string& p : field_problems) problems.push_back(path + ": " + type + ": " + p);
  }
  return problems;
}

}  // namespace

int main(int argc, char** argv) {
  // Reference the generated messages so that their descriptors are linked into the generated pool.
  const pb::Descriptor* linked[] = {fedtune::v1::CoordinatorConfig::descriptor(),
                                    fedtune::v1::SiteAgentConfig::descriptor(), fedtune::v1::RunConfig::descriptor(),
                                    fedtune::v1::FinetuneConfig::descriptor(), fedtune::v1::SynthProfile::descriptor()};
  (void)linked;

  bool example = false;
  std::vector<std::string> files;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--example") {
      example = true;
    } else if (!arg.empty() && arg[0] == '-') {
      std::fprintf(stderr, "textproto_check: unknown flag %s\nusage: textproto_check [--example] FILE...\n", argv[i]);
      return 2;
    } else {
      files.push_back(arg);
    }
  }
  if (files.empty()) {
    std::fprintf(stderr, "usage: textproto_check [--example] FILE...\n");
    return 2;
  }
  int passed = 0;
  int failed = 0;
  for (const std::string& file : files) {
    const std::vector<std::string> problems = CheckFile(file, example);
    if (problems.empty()) {
      ++passed;
      std::printf("ok %s\n", file.c_str());
    } else {
      ++failed;
      for (const std::string& p : problems) std::printf("FAIL %s\n", p.c_str());
    }
  }
  std::printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
