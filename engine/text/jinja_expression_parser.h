// The expression half of the template parser: Jinja's operator precedence (lowest
// first): conditional, or, and, not, comparisons and `in`, + -, ~, * / // %, **, unary - +,
// then postfix access, calls, filters and tests. Throws TemplateError.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/text/jinja_ast.h"
#include "engine/text/jinja_lexer.h"

namespace mf::jinja {

inline constexpr int kMaxNesting = 64;  // expression and statement depth: a deeper template is refused

using ExprPtr = std::unique_ptr<Expr>;

// Reads the tokens of one tag.
class ExpressionParser {
 public:
  ExpressionParser(const std::vector<Token>& tokens, int line) : tokens_(tokens), line_(line) {}

  bool AtEnd() const { return pos_ >= tokens_.size(); }
  [[noreturn]] void Fail(const std::string& message) const {
    throw TemplateError{message, AtEnd() ? line_ : tokens_[pos_].line};
  }
  bool PeekOperator(const char* op) const {
    return !AtEnd() && tokens_[pos_].type == Token::Type::kOperator && tokens_[pos_].text == op;
  }
  bool PeekName(const char* name) const {
    return !AtEnd() && tokens_[pos_].type == Token::Type::kName && tokens_[pos_].text == name;
  }
  bool SkipOperator(const char* op) { return PeekOperator(op) ? (++pos_, true) : false; }
  bool SkipName(const char* name) { return PeekName(name) ? (++pos_, true) : false; }
  void ExpectOperator(const char* op) {
    if (!SkipOperator(op)) Fail(absl::StrCat("expected '", op, "'", Found()));
  }
  std::string ExpectName() {
    if (AtEnd() || tokens_[pos_].type != Token::Type::kName) Fail(absl::StrCat("expected a name", Found()));
    return tokens_[pos_++].text;
  }
  void ExpectEnd() {
    if (!AtEnd()) Fail(absl::StrCat("unexpected", Found()));
  }

  // An expression; `allow_condition`: may be `a if b else c` (not in a for loop's iterable).
  ExprPtr Expression(bool allow_condition = true);

 private:
  struct NestingGuard {
    explicit NestingGuard(ExpressionParser* parser) : parser(parser) {
      if (++parser->depth_ > kMaxNesting) parser->Fail("expression nested too deeply");
    }
    ~NestingGuard() { --parser->depth_; }
    ExpressionParser* parser;
  };

  std::string Found() const;

  ExprPtr Node(Expr::Kind kind, std::string name = "") const;
  ExprPtr Binary(std::string op, ExprPtr left, ExprPtr right) const;

  ExprPtr Or();
  ExprPtr And();
  ExprPtr Not();
  ExprPtr Compare();
  ExprPtr Sum();
  ExprPtr Concat();
  ExprPtr Product();
  ExprPtr Power();
  ExprPtr Unary(bool with_filters);

  ExprPtr Primary();

  ExprPtr Postfix(ExprPtr node);

  ExprPtr Subscript(ExprPtr target);

  // (positional..., name=value...) appended to node.operands.
  void Arguments(Expr& node);

  ExprPtr FiltersAndTests(ExprPtr node);

  // `x is divisibleby 3`, `x is equalto "a"`: a test's single argument without parentheses.
  bool TakesBareTestArgument() const;

  const std::vector<Token>& tokens_;
  size_t pos_ = 0;
  int line_;
  int depth_ = 0;
};

}  // namespace mf::jinja
