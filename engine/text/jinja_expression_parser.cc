#include "engine/text/jinja_expression_parser.h"

#include <set>

#include "absl/strings/str_cat.h"

namespace mf::jinja {

ExprPtr ExpressionParser::Expression(bool allow_condition) {
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

std::string ExpressionParser::Found() const { return AtEnd() ? " at the end of the tag" : absl::StrCat(", found '", tokens_[pos_].text, "'"); }

ExprPtr ExpressionParser::Node(Expr::Kind kind, std::string name) const {
  auto node = std::make_unique<Expr>();
  node->kind = kind;
  node->line = AtEnd() ? line_ : tokens_[pos_].line;
  node->name = std::move(name);
  return node;
}

ExprPtr ExpressionParser::Binary(std::string op, ExprPtr left, ExprPtr right) const {
  ExprPtr node = Node(Expr::Kind::kBinary, std::move(op));
  node->operands.push_back(std::move(left));
  node->operands.push_back(std::move(right));
  return node;
}

ExprPtr ExpressionParser::Or() {
  ExprPtr left = And();
  while (SkipName("or")) left = Binary("or", std::move(left), And());
  return left;
}

ExprPtr ExpressionParser::And() {
  ExprPtr left = Not();
  while (SkipName("and")) left = Binary("and", std::move(left), Not());
  return left;
}

ExprPtr ExpressionParser::Not() {
  if (!SkipName("not")) return Compare();
  NestingGuard guard(this);
  ExprPtr node = Node(Expr::Kind::kUnary, "not");
  node->operands.push_back(Not());
  return node;
}

ExprPtr ExpressionParser::Compare() {
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

ExprPtr ExpressionParser::Sum() {
  ExprPtr left = Concat();
  while (PeekOperator("+") || PeekOperator("-")) {
    const std::string op = tokens_[pos_++].text;
    left = Binary(op, std::move(left), Concat());
  }
  return left;
}

ExprPtr ExpressionParser::Concat() {
  ExprPtr left = Product();
  while (SkipOperator("~")) left = Binary("~", std::move(left), Product());
  return left;
}

ExprPtr ExpressionParser::Product() {
  ExprPtr left = Power();
  while (PeekOperator("*") || PeekOperator("/") || PeekOperator("//") || PeekOperator("%")) {
    const std::string op = tokens_[pos_++].text;
    left = Binary(op, std::move(left), Power());
  }
  return left;
}

ExprPtr ExpressionParser::Power() {
  ExprPtr left = Unary(true);
  while (SkipOperator("**")) left = Binary("**", std::move(left), Unary(true));
  return left;
}

ExprPtr ExpressionParser::Unary(bool with_filters) {
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

ExprPtr ExpressionParser::Primary() {
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

ExprPtr ExpressionParser::Postfix(ExprPtr node) {
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

ExprPtr ExpressionParser::Subscript(ExprPtr target) {
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

void ExpressionParser::Arguments(Expr& node) {
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

ExprPtr ExpressionParser::FiltersAndTests(ExprPtr node) {
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

bool ExpressionParser::TakesBareTestArgument() const {
  if (AtEnd()) return false;
  const Token& token = tokens_[pos_];
  if (token.type != Token::Type::kName) return token.type != Token::Type::kOperator || token.text == "[";
  static const std::set<std::string> kKeywords = {"and", "or", "else", "if", "in", "is", "not"};
  return !kKeywords.contains(token.text);
}

}  // namespace mf::jinja
