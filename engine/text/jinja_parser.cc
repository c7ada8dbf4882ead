// Template statements and expressions, with Jinja's operator precedence (lowest first):
// conditional, or, and, not, comparisons and `in`, + -, ~, * / // %, **, unary - +, then
// postfix access, calls, filters and tests.
#include <set>

#include "absl/strings/str_cat.h"
#include "engine/text/jinja_ast.h"
#include "engine/text/jinja_lexer.h"

namespace mf::jinja {
namespace {

constexpr int kMaxNesting = 64;  // expression and statement depth: a deeper template is refused

using ExprPtr = std::unique_ptr<Expr>;

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

  ExprPtr Expression(bool allow_condition = true) {
    NestingGuard guard(this);
    ExprPtr value = Or();
    while (allow_condition && SkipName("if")) {
      ExprPtr condition = Node(Expr::Kind::kCondition);
      condition->operands.push_back(Or());
      condition->operands.push_back(std::move(value));
      condition->operands.push_back(SkipName("else") ? Expression() : nullptr);
      value = std::move(condition);
    }
    return value;
  }

 private:
  struct NestingGuard {
    explicit NestingGuard(ExpressionParser* parser) : parser(parser) {
      if (++parser->depth_ > kMaxNesting) parser->Fail("expression nested too deeply");
    }
    ~NestingGuard() { --parser->depth_; }
    ExpressionParser* parser;
  };

  std::string Found() const { return AtEnd() ? " at the end of the tag" : absl::StrCat(", found '", tokens_[pos_].text, "'"); }

  ExprPtr Node(Expr::Kind kind, std::string name = "") const {
    auto node = std::make_unique<Expr>();
    node->kind = kind;
    node->line = AtEnd() ? line_ : tokens_[pos_].line;
    node->name = std::move(name);
    return node;
  }
  ExprPtr Binary(std::string op, ExprPtr left, ExprPtr right) const {
    ExprPtr node = Node(Expr::Kind::kBinary, std::move(op));
    node->operands.push_back(std::move(left));
    node->operands.push_back(std::move(right));
    return node;
  }

  ExprPtr Or() {
    ExprPtr left = And();
    while (SkipName("or")) left = Binary("or", std::move(left), And());
    return left;
  }
  ExprPtr And() {
    ExprPtr left = Not();
    while (SkipName("and")) left = Binary("and", std::move(left), Not());
    return left;
  }
  ExprPtr Not() {
    if (!SkipName("not")) return Compare();
    NestingGuard guard(this);
    ExprPtr node = Node(Expr::Kind::kUnary, "not");
    node->operands.push_back(Not());
    return node;
  }
  ExprPtr Compare() {
    ExprPtr left = Sum();
    while (true) {
      std::string op;
      for (const char* candidate : {"==", "!=", "<=", ">=", "<", ">"}) {
        if (SkipOperator(candidate)) op = candidate;
        if (!op.empty()) break;
      }
      if (op.empty() && SkipName("in")) op = "in";
      if (op.empty() && PeekName("not") && pos_ + 1 < tokens_.size() && tokens_[pos_ + 1].text == "in") {
        pos_ += 2;
        op = "not in";
      }
      if (op.empty()) return left;
      left = Binary(op, std::move(left), Sum());
    }
  }
  ExprPtr Sum() {
    ExprPtr left = Concat();
    while (PeekOperator("+") || PeekOperator("-")) {
      const std::string op = tokens_[pos_++].text;
      left = Binary(op, std::move(left), Concat());
    }
    return left;
  }
  ExprPtr Concat() {
    ExprPtr left = Product();
    while (SkipOperator("~")) left = Binary("~", std::move(left), Product());
    return left;
  }
  ExprPtr Product() {
    ExprPtr left = Power();
    while (PeekOperator("*") || PeekOperator("/") || PeekOperator("//") || PeekOperator("%")) {
      const std::string op = tokens_[pos_++].text;
      left = Binary(op, std::move(left), Power());
    }
    return left;
  }
  ExprPtr Power() {
    ExprPtr left = Unary(true);
    while (SkipOperator("**")) left = Binary("**", std::move(left), Unary(true));
    return left;
  }
  ExprPtr Unary(bool with_filters) {
    NestingGuard guard(this);
    ExprPtr node;
    if (PeekOperator("-") || PeekOperator("+")) {
      node = Node(Expr::Kind::kUnary, tokens_[pos_++].text);
      node->operands.push_back(Unary(false));
    } else {
      node = Primary();
    }
    node = Postfix(std::move(node));
    return with_filters ? FiltersAndTests(std::move(node)) : std::move(node);
  }

  ExprPtr Primary() {
    if (AtEnd()) Fail("expected an expression at the end of the tag");
    const Token& token = tokens_[pos_];
    if (token.type == Token::Type::kString) {
      std::string text;
      while (!AtEnd() && tokens_[pos_].type == Token::Type::kString) text += tokens_[pos_++].text;  // "a" "b"
      ExprPtr node = Node(Expr::Kind::kLiteral);
      node->literal = Value(std::move(text));
      return node;
    }
    if (token.type == Token::Type::kInteger || token.type == Token::Type::kFloat) {
      ExprPtr node = Node(Expr::Kind::kLiteral);
      node->literal = token.value;
      ++pos_;
      return node;
    }
    if (token.type == Token::Type::kName) {
      ExprPtr node = Node(Expr::Kind::kLiteral);
      const std::string& name = token.text;
      ++pos_;
      if (name == "true" || name == "True") node->literal = Value(true);
      else if (name == "false" || name == "False") node->literal = Value(false);
      else if (name == "none" || name == "None") node->literal = Value(nullptr);
      else node = Node(Expr::Kind::kName, name);
      return node;
    }
    if (SkipOperator("(")) {
      ExprPtr first = Expression();
      if (SkipOperator(")")) return first;
      ExprPtr tuple = Node(Expr::Kind::kList);
      tuple->operands.push_back(std::move(first));
      while (SkipOperator(",") && !PeekOperator(")")) tuple->operands.push_back(Expression());
      ExpectOperator(")");
      return tuple;
    }
    if (SkipOperator("[")) {
      ExprPtr list = Node(Expr::Kind::kList);
      while (!PeekOperator("]")) {
        list->operands.push_back(Expression());
        if (!SkipOperator(",")) break;
      }
      ExpectOperator("]");
      return list;
    }
    if (SkipOperator("{")) {
      ExprPtr dict = Node(Expr::Kind::kDict);
      while (!PeekOperator("}")) {
        dict->operands.push_back(Expression());
        ExpectOperator(":");
        dict->operands.push_back(Expression());
        if (!SkipOperator(",")) break;
      }
      ExpectOperator("}");
      return dict;
    }
    Fail(absl::StrCat("expected an expression", Found()));
  }

  ExprPtr Postfix(ExprPtr node) {
    while (true) {
      if (SkipOperator(".")) {
        if (!AtEnd() && tokens_[pos_].type == Token::Type::kInteger) {  // foo.0 is foo[0]
          ExprPtr item = Node(Expr::Kind::kItem);
          item->operands.push_back(std::move(node));
          item->operands.push_back(Primary());
          node = std::move(item);
          continue;
        }
        ExprPtr attribute = Node(Expr::Kind::kAttribute, ExpectName());
        attribute->operands.push_back(std::move(node));
        node = std::move(attribute);
      } else if (SkipOperator("[")) {
        node = Subscript(std::move(node));
      } else if (PeekOperator("(")) {
        ExprPtr call = Node(Expr::Kind::kCall);
        call->operands.push_back(std::move(node));
        Arguments(*call);
        node = std::move(call);
      } else {
        return node;
      }
    }
  }

  ExprPtr Subscript(ExprPtr target) {
    std::vector<ExprPtr> parts;
    bool is_slice = false;
    parts.push_back(PeekOperator(":") ? nullptr : Expression());
    while (parts.size() < 3 && SkipOperator(":")) {
      is_slice = true;
      parts.push_back(PeekOperator(":") || PeekOperator("]") ? nullptr : Expression());
    }
    ExpectOperator("]");
    ExprPtr node = Node(is_slice ? Expr::Kind::kSlice : Expr::Kind::kItem);
    node->operands.push_back(std::move(target));
    for (ExprPtr& part : parts) node->operands.push_back(std::move(part));
    if (is_slice) node->operands.resize(4);
    return node;
  }

  // (positional..., name=value...) appended to node.operands.
  void Arguments(Expr& node) {
    ExpectOperator("(");
    while (!PeekOperator(")")) {
      const bool is_keyword = !AtEnd() && tokens_[pos_].type == Token::Type::kName && pos_ + 1 < tokens_.size() &&
                              tokens_[pos_ + 1].type == Token::Type::kOperator && tokens_[pos_ + 1].text == "=";
      if (is_keyword) {
        node.keyword_names.push_back(tokens_[pos_].text);
        pos_ += 2;
      } else if (!node.keyword_names.empty()) {
        Fail("positional argument after a keyword argument");
      }
      node.operands.push_back(Expression());
      if (!SkipOperator(",")) break;
    }
    ExpectOperator(")");
  }

  ExprPtr FiltersAndTests(ExprPtr node) {
    while (true) {
      if (SkipOperator("|")) {
        ExprPtr filter = Node(Expr::Kind::kFilter, ExpectName());
        filter->operands.push_back(std::move(node));
        if (PeekOperator("(")) Arguments(*filter);
        node = std::move(filter);
      } else if (SkipName("is")) {
        ExprPtr test = Node(Expr::Kind::kTest);
        test->negated = SkipName("not");
        test->name = ExpectName();
        test->operands.push_back(std::move(node));
        if (PeekOperator("(")) {
          Arguments(*test);
        } else if (TakesBareTestArgument()) {
          test->operands.push_back(Unary(false));
        }
        node = std::move(test);
      } else {
        return node;
      }
    }
  }

  // `x is divisibleby 3`, `x is equalto "a"`: a test's single argument without parentheses.
  bool TakesBareTestArgument() const {
    if (AtEnd()) return false;
    const Token& token = tokens_[pos_];
    if (token.type != Token::Type::kName) return token.type != Token::Type::kOperator || token.text == "[";
    static const std::set<std::string> kKeywords = {"and", "or", "else", "if", "in", "is", "not"};
    return !kKeywords.contains(token.text);
  }

  const std::vector<Token>& tokens_;
  size_t pos_ = 0;
  int line_;
  int depth_ = 0;
};

class StatementParser {
 public:
  explicit StatementParser(std::vector<Piece> pieces) : pieces_(std::move(pieces)) {}

  Body Run() {
    Body body = ParseBody({});
    if (index_ < pieces_.size()) {
      throw TemplateError{absl::StrCat("unexpected '", Keyword(pieces_[index_]), "'"), pieces_[index_].line};
    }
    return body;
  }

 private:
  static std::string Keyword(const Piece& piece) {
    if (piece.tokens.empty() || piece.tokens[0].type != Token::Type::kName) {
      throw TemplateError{"expected a statement name after '{%'", piece.line};
    }
    return piece.tokens[0].text;
  }

  // Statements up to (not including) a {% tag %} named in `stops`, or the end.
  Body ParseBody(const std::set<std::string>& stops) {
    if (++depth_ > kMaxNesting) throw TemplateError{"statements nested too deeply", Line()};
    Body body;
    while (index_ < pieces_.size()) {
      const Piece& piece = pieces_[index_];
      if (piece.kind == Piece::Kind::kText) {
        body.push_back(Statement(Stmt::Kind::kText, piece.line));
        body.back()->text = piece.text;
        ++index_;
      } else if (piece.kind == Piece::Kind::kOutput) {
        ExpressionParser parser(piece.tokens, piece.line);
        body.push_back(Statement(Stmt::Kind::kOutput, piece.line));
        body.back()->expr = parser.Expression();
        parser.ExpectEnd();
        ++index_;
      } else {
        const std::string keyword = Keyword(piece);
        if (stops.contains(keyword)) break;
        ++index_;
        ParseStatement(keyword, piece, body);
      }
    }
    --depth_;
    return body;
  }

  void ParseStatement(const std::string& keyword, const Piece& piece, Body& body) {
    ExpressionParser parser(piece.tokens, piece.line);
    parser.ExpectName();  // the keyword
    if (keyword == "if") {
      auto statement = Statement(Stmt::Kind::kIf, piece.line);
      for (std::string branch = "if"; branch != "endif";) {
        if (branch == "else") {
          statement->else_body = ParseBody({"endif"});
        } else {
          ExpressionParser condition(pieces_[index_ - 1].tokens, pieces_[index_ - 1].line);
          condition.ExpectName();
          statement->conditions.push_back(condition.Expression());
          condition.ExpectEnd();
          statement->bodies.push_back(ParseBody({"elif", "else", "endif"}));
        }
        branch = Close(keyword, piece.line);
      }
      body.push_back(std::move(statement));
    } else if (keyword == "for") {
      auto statement = Statement(Stmt::Kind::kFor, piece.line);
      do statement->targets.push_back(parser.ExpectName());
      while (parser.SkipOperator(","));
      if (!parser.SkipName("in")) parser.Fail("expected 'in' in the for statement");
      statement->expr = parser.Expression(/*allow_condition=*/false);
      if (parser.SkipName("if")) statement->conditions.push_back(parser.Expression(false));
      if (parser.PeekName("recursive")) parser.Fail("recursive loops are not supported");
      parser.ExpectEnd();
      statement->bodies.push_back(ParseBody({"else", "endfor"}));
      if (Close(keyword, piece.line) == "else") {
        statement->else_body = ParseBody({"endfor"});
        Close(keyword, piece.line);
      }
      body.push_back(std::move(statement));
    } else if (keyword == "set") {
      auto statement = Statement(Stmt::Kind::kSet, piece.line);
      statement->targets.push_back(parser.ExpectName());
      if (parser.SkipOperator(".")) statement->attribute = parser.ExpectName();
      if (!parser.SkipOperator("=")) parser.Fail("only '{% set name = value %}' is supported (no block set)");
      statement->expr = parser.Expression();
      parser.ExpectEnd();
      body.push_back(std::move(statement));
    } else if (keyword == "generation") {  // Hugging Face's marker for assistant text: rendered as is
      parser.ExpectEnd();
      Body inner = ParseBody({"endgeneration"});
      Close(keyword, piece.line);
      for (auto& statement : inner) body.push_back(std::move(statement));
    } else if (keyword.starts_with("end") || keyword == "elif" || keyword == "else") {
      throw TemplateError{absl::StrCat("unexpected '", keyword, "'"), piece.line};
    } else {
      throw TemplateError{absl::StrCat("unsupported statement '{% ", keyword, " %}'"), piece.line};
    }
  }

  // Consumes the tag that ended a block body and returns its name.
  std::string Close(const std::string& opener, int opener_line) {
    if (index_ >= pieces_.size()) {
      throw TemplateError{absl::StrCat("'{% ", opener, " %}' is never closed"), opener_line};
    }
    const std::string keyword = Keyword(pieces_[index_++]);
    if (keyword != "elif" && keyword != "if") {  // an elif's condition is read by the caller
      ExpressionParser parser(pieces_[index_ - 1].tokens, pieces_[index_ - 1].line);
      parser.ExpectName();
      parser.ExpectEnd();
    }
    return keyword;
  }

  std::unique_ptr<Stmt> Statement(Stmt::Kind kind, int line) const {
    auto statement = std::make_unique<Stmt>();
    statement->kind = kind;
    statement->line = line;
    return statement;
  }
  int Line() const { return index_ < pieces_.size() ? pieces_[index_].line : 0; }

  std::vector<Piece> pieces_;
  size_t index_ = 0;
  int depth_ = 0;
};

}  // namespace

Body ParseTemplate(std::string_view source) { return StatementParser(LexTemplate(source)).Run(); }

}  // namespace mf::jinja
