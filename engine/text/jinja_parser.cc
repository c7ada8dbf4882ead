// Template statements: text, output, if / for / set blocks (expressions:
// jinja_expression_parser.cc).
#include <set>

#include "absl/strings/str_cat.h"
#include "engine/text/jinja_ast.h"
#include "engine/text/jinja_expression_parser.h"
#include "engine/text/jinja_lexer.h"

namespace mf::jinja {
namespace {



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
