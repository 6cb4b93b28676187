#include "data/brown_corpus.h"

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <system_error>

#include "data/file_util.h"

namespace grove::data {
namespace {

namespace fs = std::filesystem;

// Corpus file names: 'c', genre letter a-r, two digits.
bool IsCorpusFileName(const std::string& name) {
  return name.size() == 4 && name[0] == 'c' && name[1] >= 'a' && name[1] <= 'r' &&
         std::isdigit(static_cast<unsigned char>(name[2])) &&
         std::isdigit(static_cast<unsigned char>(name[3]));
}

bool IsSpace(char c) {
  return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

// Tokens that attach to the previous word / the next word.
bool NoSpaceBefore(std::string_view w) {
  return w == "," || w == "." || w == ";" || w == ":" || w == "?" || w == "!" || w == ")" ||
         w == "]" || w == "''" || w == "'";
}
bool NoSpaceAfter(std::string_view w) {
  return w == "``" || w == "(" || w == "[" || w == "`";
}

std::string_view Surface(std::string_view w) {
  if (w == "``" || w == "''") return "\"";
  if (w == "`") return "'";
  return w;
}

}  // namespace

std::string DetagSentence(std::string_view line, int64_t* num_words) {
  std::string out;
  bool glue_next = true;  // no space before the first word
  size_t i = 0;
  while (i < line.size()) {
    while (i < line.size() && IsSpace(line[i])) ++i;
    size_t j = i;
    while (j < line.size() && !IsSpace(line[j])) ++j;
    if (j == i) break;
    std::string_view tok = line.substr(i, j - i);
    i = j;
    // The tag follows the last '/'; words may contain '/' themselves ("1-1/2/cd").
    size_t slash = tok.rfind('/');
    std::string_view word =
        (slash == std::string_view::npos || slash == 0) ? tok : tok.substr(0, slash);
    if (num_words) ++*num_words;
    if (!glue_next && !NoSpaceBefore(word)) out += ' ';
    out += Surface(word);
    glue_next = NoSpaceAfter(word);
  }
  return out;
}

std::vector<std::string> ParseBrownFile(std::string_view contents, int64_t* num_words) {
  std::vector<std::string> paragraphs;
  std::string current;
  size_t pos = 0;
  while (pos <= contents.size()) {
    size_t end = contents.find('\n', pos);
    if (end == std::string_view::npos) end = contents.size();
    std::string sentence = DetagSentence(contents.substr(pos, end - pos), num_words);
    if (sentence.empty()) {  // blank line: paragraph boundary
      if (!current.empty()) paragraphs.push_back(std::move(current));
      current.clear();
    } else {
      if (!current.empty()) current += ' ';
      current += sentence;
    }
    pos = end + 1;
  }
  if (!current.empty()) paragraphs.push_back(std::move(current));
  return paragraphs;
}

StatusOr<Corpus> ReadBrownCorpus(const std::string& dir) {
  const std::string fix = " (run launch/fetch_corpus.sh " + dir + " to fetch it)";
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    return Status::Error("corpus directory " + dir + " does not exist or is not a directory" + fix);
  }
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    std::string name = entry.path().filename().string();
    if (entry.is_regular_file() && IsCorpusFileName(name)) names.push_back(name);
  }
  if (ec) return Status::Error("cannot list corpus directory " + dir + ": " + ec.message());
  if (names.empty()) {
    return Status::Error("corpus directory " + dir +
                         " holds no Brown corpus files (expected ca01 ... cr09)" + fix);
  }
  std::sort(names.begin(), names.end());

  Corpus corpus;
  Fnv1a64 hash;
  for (const std::string& name : names) {
    const std::string path = (fs::path(dir) / name).string();
    StatusOr<std::string> contents = ReadFileToString(path);
    if (!contents.ok()) return contents.status();
    hash.Update(name);
    hash.Update("\0", 1);
    hash.Update(contents.value());
    Document doc;
    doc.name = name;
    doc.paragraphs = ParseBrownFile(contents.value(), &corpus.num_words);
    if (doc.paragraphs.empty()) {
      return Status::Error("corpus file " + path + " holds no text; the corpus looks damaged" +
                           " (delete " + dir + " and run launch/fetch_corpus.sh " + dir + ")");
    }
    corpus.documents.push_back(std::move(doc));
  }
  corpus.checksum = hash.digest();
  return corpus;
}

}  // namespace grove::data
