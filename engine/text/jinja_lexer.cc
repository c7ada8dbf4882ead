#include "engine/text/jinja_lexer.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "engine/text/utf8.h"

namespace mf::jinja {
namespace {

bool IsSpace(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

// Python's newline handling in Jinja: \r\n and \r become \n, and one trailing newline of
// the template is dropped (keep_trailing_newline=False).
std::string NormalizeNewlines(std::string_view source) {
  std::string out;
  out.reserve(source.size());
  for (size_t i = 0; i < source.size(); ++i) {
    if (source[i] == '\r') {
      out += '\n';
      if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
    } else {
      out += source[i];
    }
  }
  if (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

class Lexer {
 public:
  explicit Lexer(std::string_view source) : source_(NormalizeNewlines(source)) {}

  std::vector<Piece> Run() {
    bool line_starting = true;
    while (pos_ < source_.size()) {
      const size_t tag = FindTagStart(pos_);
      std::string text = source_.substr(pos_, tag - pos_);
      const int text_line = line_;
      Advance(tag);
      if (tag == source_.size()) {
        EmitText(std::move(text), text_line);
        break;
      }
      const char kind = source_[tag + 1];
      const char modifier = tag + 2 < source_.size() ? source_[tag + 2] : '\0';
      if (modifier == '-') {
        text.erase(std::find_if_not(text.rbegin(), text.rend(), IsSpace).base(), text.end());
      } else if (kind != '{' && modifier != '+') {
        const size_t line_start = text.rfind('\n') + 1;  // 0 when there is no newline
        const bool only_blanks = text.find_first_not_of(" \t", line_start) == std::string::npos;
        if ((line_start > 0 || line_starting) && only_blanks) text.resize(line_start);
      }
      EmitText(std::move(text), text_line);
      const size_t body = tag + 2 + (modifier == '-' || modifier == '+' ? 1 : 0);
      const bool strip_after = kind == '#' ? LexComment(body) : LexTag(kind, body);
      line_starting = SkipAfterTag(kind, strip_after);
    }
    return std::move(pieces_);
  }

 private:
  [[noreturn]] void Fail(const std::string& message) const { throw TemplateError{message, line_}; }

  size_t FindTagStart(size_t from) const {
    for (size_t i = source_.find('{', from); i != std::string::npos; i = source_.find('{', i + 1)) {
      if (i + 1 < source_.size() && (source_[i + 1] == '{' || source_[i + 1] == '%' || source_[i + 1] == '#')) return i;
    }
    return source_.size();
  }

  void Advance(size_t to) {
    line_ += static_cast<int>(std::count(source_.begin() + static_cast<ptrdiff_t>(pos_),
                                         source_.begin() + static_cast<ptrdiff_t>(to), '\n'));
    pos_ = to;
  }

  void EmitText(std::string text, int line) {
    if (text.empty()) return;
    pieces_.push_back(Piece{Piece::Kind::kText, line, std::move(text), {}});
  }

  // Returns whether the comment asked to strip the whitespace after it.
  bool LexComment(size_t body) {
    const size_t end = source_.find("#}", body);
    if (end == std::string::npos) Fail("unterminated comment");
    Advance(end + 2);
    return end > body && source_[end - 1] == '-';
  }

  bool LexTag(char kind, size_t body) {
    Piece piece{kind == '{' ? Piece::Kind::kOutput : Piece::Kind::kStatement, line_, "", {}};
    const std::string close = kind == '{' ? "}}" : "%}";
    Advance(body);
    int bracket_depth = 0;  // a '}}' inside a dict literal does not end the tag
    while (true) {
      while (pos_ < source_.size() && IsSpace(source_[pos_])) Advance(pos_ + 1);
      if (pos_ >= source_.size()) Fail(absl::StrCat("unterminated tag: missing '", close, "'"));
      if (bracket_depth == 0) {
        if (source_.compare(pos_, 3, "-" + close) == 0 || source_.compare(pos_, 3, "+" + close) == 0) {
          const bool strip = source_[pos_] == '-';
          Advance(pos_ + 3);
          pieces_.push_back(std::move(piece));
          return strip;
        }
        if (source_.compare(pos_, 2, close) == 0) {
          Advance(pos_ + 2);
          pieces_.push_back(std::move(piece));
          return false;
        }
      }
      Token token = NextToken();
      if (token.type == Token::Type::kOperator) {
        if (token.text == "(" || token.text == "[" || token.text == "{") ++bracket_depth;
        if (token.text == ")" || token.text == "]" || token.text == "}") bracket_depth = std::max(0, bracket_depth - 1);
      }
      piece.tokens.push_back(std::move(token));
    }
  }

  // Skips what whitespace control removes after a tag; returns whether the next text
  // starts a line.
  bool SkipAfterTag(char kind, bool strip_after) {
    if (strip_after) {
      size_t end = pos_;
      while (end < source_.size() && IsSpace(source_[end])) ++end;
      const bool ends_with_newline = end > pos_ && source_[end - 1] == '\n';
      Advance(end);
      return ends_with_newline;
    }
    if (kind != '{' && pos_ < source_.size() && source_[pos_] == '\n') {  // trim_blocks
      Advance(pos_ + 1);
      return true;
    }
    return false;
  }

  Token NextToken() {
    Token token{Token::Type::kOperator, "", Value(), line_};
    const char c = source_[pos_];
    if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
      size_t end = pos_;
      while (end < source_.size() && (std::isalnum(static_cast<unsigned char>(source_[end])) || source_[end] == '_')) ++end;
      token.type = Token::Type::kName;
      token.text = source_.substr(pos_, end - pos_);
      Advance(end);
    } else if (std::isdigit(static_cast<unsigned char>(c))) {
      LexNumber(token);
    } else if (c == '\'' || c == '"') {
      LexString(token);
    } else {
      static const char* const kOperators[] = {"//", "**", "==", "!=", "<=", ">=", "+", "-", "*", "/", "%", "~", "<",
                                               ">", "=", ".", ",", ":", "|", "(", ")", "[", "]", "{", "}"};
      for (const char* op : kOperators) {
        if (source_.compare(pos_, std::char_traits<char>::length(op), op) == 0) {
          token.text = op;
          Advance(pos_ + token.text.size());
          return token;
        }
      }
      Fail(absl::StrCat("unexpected character '", std::string(1, c), "'"));
    }
    return token;
  }

  void LexNumber(Token& token) {
    size_t end = pos_;
    auto digits = [&] { while (end < source_.size() && std::isdigit(static_cast<unsigned char>(source_[end]))) ++end; };
    digits();
    bool is_float = false;
    if (end + 1 < source_.size() && source_[end] == '.' && std::isdigit(static_cast<unsigned char>(source_[end + 1]))) {
      is_float = true;
      ++end;
      digits();
    }
    if (end < source_.size() && (source_[end] == 'e' || source_[end] == 'E')) {
      size_t exponent = end + 1;
      if (exponent < source_.size() && (source_[exponent] == '+' || source_[exponent] == '-')) ++exponent;
      if (exponent < source_.size() && std::isdigit(static_cast<unsigned char>(source_[exponent]))) {
        is_float = true;
        end = exponent;
        digits();
      }
    }
    const std::string text = source_.substr(pos_, end - pos_);
    token.type = is_float ? Token::Type::kFloat : Token::Type::kInteger;
    if (is_float) {
      const double value = std::strtod(text.c_str(), nullptr);  // out of range: inf or 0, as Python's float()
      token.value = Value(value);
    } else {
      errno = 0;
      const long long value = std::strtoll(text.c_str(), nullptr, 10);
      if (errno == ERANGE) Fail(absl::StrCat("integer literal does not fit 64 bits: ", text));
      token.value = Value(static_cast<int64_t>(value));
    }
    Advance(end);
  }

  void LexString(Token& token) {
    const char quote = source_[pos_];
    size_t i = pos_ + 1;
    std::string value;
    while (i < source_.size() && source_[i] != quote) {
      if (source_[i] != '\\' || i + 1 >= source_.size()) {
        value += source_[i++];
        continue;
      }
      const char escaped = source_[i + 1];
      i += 2;
      switch (escaped) {
        case 'n': value += '\n'; break;
        case 't': value += '\t'; break;
        case 'r': value += '\r'; break;
        case '0': value += '\0'; break;
        case '\\': case '\'': case '"': value += escaped; break;
        case '\n': break;  // a line continuation
        case 'x': case 'u': case 'U': {
          const size_t width = escaped == 'x' ? 2 : escaped == 'u' ? 4 : 8;
          if (i + width > source_.size()) Fail("truncated escape in string literal");
          const std::string hex = source_.substr(i, width);
          if (hex.find_first_not_of("0123456789abcdefABCDEF") != std::string::npos) {
            Fail(absl::StrCat("bad escape \\", std::string(1, escaped), hex, " in string literal"));
          }
          const auto code_point = static_cast<uint32_t>(std::stoul(hex, nullptr, 16));
          if (code_point > 0x10FFFF) Fail(absl::StrCat("bad escape \\U", hex, " in string literal"));
          AppendUtf8(code_point, &value);
          i += width;
          break;
        }
        default: value += '\\'; value += escaped;  // Python keeps unknown escapes as written
      }
    }
    if (i >= source_.size()) Fail("unterminated string literal");
    token.type = Token::Type::kString;
    token.text = std::move(value);
    Advance(i + 1);
  }

  std::string source_;
  size_t pos_ = 0;
  int line_ = 1;
  std::vector<Piece> pieces_;
};

}  // namespace

std::vector<Piece> LexTemplate(std::string_view source) { return Lexer(source).Run(); }

}  // namespace mf::jinja
