//! The circuit breaker's `trip` condition: the subset of CEL that Dapr's trip expressions use —
//! numbers, the five counters, `+ - * /`, comparisons, `!`, `&&`, `||` and parentheses — parsed
//! once at start-up (so a bad expression is a start-up error) and evaluated after each failure.

use std::fmt;

use thiserror::Error;

/// The counters a trip expression may read (gobreaker's `Counts`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub requests: u32,
    pub total_successes: u32,
    pub total_failures: u32,
    pub consecutive_successes: u32,
    pub consecutive_failures: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid trip expression {expression:?}: {message}")]
pub struct TripExpressionError {
    pub expression: String,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Var {
    Requests,
    TotalSuccesses,
    TotalFailures,
    ConsecutiveSuccesses,
    ConsecutiveFailures,
}

#[derive(Debug, Clone, PartialEq)]
enum Expr {
    Number(f64),
    Var(Var),
    Bool(bool),
    Arith(Box<Expr>, char, Box<Expr>),
    Compare(Box<Expr>, CompareOp, Box<Expr>),
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum CompareOp {
    Gt,
    Ge,
    Lt,
    Le,
    Eq,
    Ne,
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Number(f64),
    Ident(String),
    Op(&'static str),
    LParen,
    RParen,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Number,
    Bool,
}

/// A parsed, type-checked trip condition.
#[derive(Debug, Clone, PartialEq)]
pub struct TripExpression {
    source: String,
    root: Expr,
}

impl fmt::Display for TripExpression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl TripExpression {
    pub fn parse(source: &str) -> Result<Self, TripExpressionError> {
        let err = |message: String| TripExpressionError {
            expression: source.to_string(),
            message,
        };
        let tokens = tokenize(source).map_err(err)?;
        let mut parser = Parser { tokens, pos: 0 };
        let root = parser.or().map_err(err)?;
        if let Some(t) = parser.tokens.get(parser.pos) {
            return Err(err(format!("unexpected {t:?} after the expression")));
        }
        match kind_of(&root).map_err(err)? {
            Kind::Bool => Ok(Self {
                source: source.to_string(),
                root,
            }),
            Kind::Number => Err(err(
                "must be a condition (for example consecutiveFailures > 5), not a number".into(),
            )),
        }
    }

    /// Dapr's default, `consecutiveFailures > 5`.
    pub fn dapr_default() -> Self {
        Self {
            source: "consecutiveFailures > 5".to_string(),
            root: Expr::Compare(
                Box::new(Expr::Var(Var::ConsecutiveFailures)),
                CompareOp::Gt,
                Box::new(Expr::Number(5.0)),
            ),
        }
    }

    /// True when the breaker should open.
    pub fn trips(&self, counts: &Counts) -> bool {
        eval_bool(&self.root, counts)
    }
}

fn tokenize(text: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c.is_ascii_digit() || c == '.' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                i += 1;
            }
            // CEL's unsigned literal suffix (`5u`).
            let literal: String = chars[start..i].iter().collect();
            if i < chars.len() && (chars[i] == 'u' || chars[i] == 'U') {
                i += 1;
            }
            let n = literal
                .parse::<f64>()
                .map_err(|_| format!("{literal:?} is not a number"))?;
            tokens.push(Token::Number(n));
        } else if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            tokens.push(Token::Ident(chars[start..i].iter().collect()));
        } else if c == '(' {
            tokens.push(Token::LParen);
            i += 1;
        } else if c == ')' {
            tokens.push(Token::RParen);
            i += 1;
        } else {
            let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
            let op = ["&&", "||", ">=", "<=", "==", "!="]
                .into_iter()
                .find(|op| *op == two);
            if let Some(op) = op {
                tokens.push(Token::Op(op));
                i += 2;
                continue;
            }
            let op = [">", "<", "!", "+", "-", "*", "/"]
                .into_iter()
                .find(|op| op.starts_with(c))
                .ok_or_else(|| format!("unexpected character {c:?}"))?;
            tokens.push(Token::Op(op));
            i += 1;
        }
    }
    Ok(tokens)
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
}

impl Parser {
    fn peek_op(&self, ops: &[&'static str]) -> Option<&'static str> {
        match self.tokens.get(self.pos) {
            Some(Token::Op(op)) if ops.contains(op) => Some(op),
            _ => None,
        }
    }

    fn or(&mut self) -> Result<Expr, String> {
        let mut left = self.and()?;
        while self.peek_op(&["||"]).is_some() {
            self.pos += 1;
            left = Expr::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, String> {
        let mut left = self.comparison()?;
        while self.peek_op(&["&&"]).is_some() {
            self.pos += 1;
            left = Expr::And(Box::new(left), Box::new(self.comparison()?));
        }
        Ok(left)
    }

    fn comparison(&mut self) -> Result<Expr, String> {
        let left = self.sum()?;
        let Some(op) = self.peek_op(&[">", ">=", "<", "<=", "==", "!="]) else {
            return Ok(left);
        };
        self.pos += 1;
        let op = match op {
            ">" => CompareOp::Gt,
            ">=" => CompareOp::Ge,
            "<" => CompareOp::Lt,
            "<=" => CompareOp::Le,
            "==" => CompareOp::Eq,
            _ => CompareOp::Ne,
        };
        let right = self.sum()?;
        Ok(Expr::Compare(Box::new(left), op, Box::new(right)))
    }

    fn sum(&mut self) -> Result<Expr, String> {
        let mut left = self.product()?;
        while let Some(op) = self.peek_op(&["+", "-"]) {
            self.pos += 1;
            let right = self.product()?;
            left = Expr::Arith(
                Box::new(left),
                op.chars().next().unwrap_or('+'),
                Box::new(right),
            );
        }
        Ok(left)
    }

    fn product(&mut self) -> Result<Expr, String> {
        let mut left = self.unary()?;
        while let Some(op) = self.peek_op(&["*", "/"]) {
            self.pos += 1;
            let right = self.unary()?;
            left = Expr::Arith(
                Box::new(left),
                op.chars().next().unwrap_or('*'),
                Box::new(right),
            );
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Expr, String> {
        if self.peek_op(&["!"]).is_some() {
            self.pos += 1;
            return Ok(Expr::Not(Box::new(self.unary()?)));
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Expr, String> {
        let token = self
            .tokens
            .get(self.pos)
            .cloned()
            .ok_or_else(|| "the expression ends too early".to_string())?;
        self.pos += 1;
        match token {
            Token::Number(n) => Ok(Expr::Number(n)),
            Token::Ident(name) => match name.as_str() {
                "requests" => Ok(Expr::Var(Var::Requests)),
                "totalSuccesses" => Ok(Expr::Var(Var::TotalSuccesses)),
                "totalFailures" => Ok(Expr::Var(Var::TotalFailures)),
                "consecutiveSuccesses" => Ok(Expr::Var(Var::ConsecutiveSuccesses)),
                "consecutiveFailures" => Ok(Expr::Var(Var::ConsecutiveFailures)),
                "true" => Ok(Expr::Bool(true)),
                "false" => Ok(Expr::Bool(false)),
                other => Err(format!(
                    "unknown name {other:?}; use requests, totalSuccesses, totalFailures, \
                     consecutiveSuccesses or consecutiveFailures"
                )),
            },
            Token::LParen => {
                let inner = self.or()?;
                match self.tokens.get(self.pos) {
                    Some(Token::RParen) => {
                        self.pos += 1;
                        Ok(inner)
                    }
                    _ => Err("a '(' is not closed".into()),
                }
            }
            Token::RParen => Err("unexpected ')'".into()),
            Token::Op(op) => Err(format!("unexpected operator {op:?}")),
        }
    }
}

fn kind_of(expr: &Expr) -> Result<Kind, String> {
    let want = |e: &Expr, k: Kind, what: &str| -> Result<(), String> {
        if kind_of(e)? == k {
            Ok(())
        } else {
            Err(format!("{what} needs {k:?} operands"))
        }
    };
    match expr {
        Expr::Number(_) | Expr::Var(_) => Ok(Kind::Number),
        Expr::Bool(_) => Ok(Kind::Bool),
        Expr::Arith(l, op, r) => {
            want(l, Kind::Number, &format!("'{op}'"))?;
            want(r, Kind::Number, &format!("'{op}'"))?;
            Ok(Kind::Number)
        }
        Expr::Compare(l, _, r) => {
            want(l, Kind::Number, "a comparison")?;
            want(r, Kind::Number, "a comparison")?;
            Ok(Kind::Bool)
        }
        Expr::Not(e) => {
            want(e, Kind::Bool, "'!'")?;
            Ok(Kind::Bool)
        }
        Expr::And(l, r) | Expr::Or(l, r) => {
            want(l, Kind::Bool, "'&&' and '||'")?;
            want(r, Kind::Bool, "'&&' and '||'")?;
            Ok(Kind::Bool)
        }
    }
}

fn eval_number(expr: &Expr, c: &Counts) -> f64 {
    match expr {
        Expr::Number(n) => *n,
        Expr::Var(v) => f64::from(match v {
            Var::Requests => c.requests,
            Var::TotalSuccesses => c.total_successes,
            Var::TotalFailures => c.total_failures,
            Var::ConsecutiveSuccesses => c.consecutive_successes,
            Var::ConsecutiveFailures => c.consecutive_failures,
        }),
        Expr::Arith(l, op, r) => {
            let (l, r) = (eval_number(l, c), eval_number(r, c));
            match op {
                '+' => l + r,
                '-' => l - r,
                '*' => l * r,
                // Division by zero yields 0 rather than infinity, so `totalFailures / requests`
                // on an empty window never trips.
                _ if r == 0.0 => 0.0,
                _ => l / r,
            }
        }
        // Type checking at parse time keeps booleans out of arithmetic.
        _ => 0.0,
    }
}

fn eval_bool(expr: &Expr, c: &Counts) -> bool {
    match expr {
        Expr::Bool(b) => *b,
        Expr::Compare(l, op, r) => {
            let (l, r) = (eval_number(l, c), eval_number(r, c));
            match op {
                CompareOp::Gt => l > r,
                CompareOp::Ge => l >= r,
                CompareOp::Lt => l < r,
                CompareOp::Le => l <= r,
                CompareOp::Eq => l == r,
                CompareOp::Ne => l != r,
            }
        }
        Expr::Not(e) => !eval_bool(e, c),
        Expr::And(l, r) => eval_bool(l, c) && eval_bool(r, c),
        Expr::Or(l, r) => eval_bool(l, c) || eval_bool(r, c),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(requests: u32, failures: u32, consecutive: u32) -> Counts {
        Counts {
            requests,
            total_successes: requests - failures,
            total_failures: failures,
            consecutive_successes: 0,
            consecutive_failures: consecutive,
        }
    }

    #[test]
    fn dapr_examples() {
        let e = TripExpression::parse("consecutiveFailures > 5").unwrap();
        assert!(!e.trips(&counts(5, 5, 5)));
        assert!(e.trips(&counts(6, 6, 6)));
        let e = TripExpression::parse("consecutiveFailures >= 2u").unwrap();
        assert!(e.trips(&counts(2, 2, 2)));
        let e = TripExpression::parse("requests > 10 && totalFailures / requests > 0.5").unwrap();
        assert!(!e.trips(&counts(10, 9, 0)));
        assert!(e.trips(&counts(12, 7, 0)));
        assert!(!e.trips(&counts(12, 6, 0)));
    }

    #[test]
    fn precedence_and_parentheses() {
        let e = TripExpression::parse("totalFailures > 1 || requests > 3 && false").unwrap();
        assert!(e.trips(&counts(2, 2, 0)));
        let e = TripExpression::parse("(totalFailures > 1 || requests > 3) && false").unwrap();
        assert!(!e.trips(&counts(2, 2, 0)));
        let e = TripExpression::parse("!(requests - totalSuccesses * 2 < 0)").unwrap();
        assert!(e.trips(&counts(4, 2, 0)));
        assert!(!e.trips(&counts(4, 1, 0)));
        let e = TripExpression::parse("totalFailures / requests == 0").unwrap();
        assert!(e.trips(&counts(0, 0, 0)));
    }

    #[test]
    fn default_matches_its_source() {
        let d = TripExpression::dapr_default();
        assert_eq!(TripExpression::parse(&d.to_string()).unwrap(), d);
    }

    #[test]
    fn rejects_bad_expressions() {
        for bad in [
            "",
            "consecutiveFailures",
            "consecutiveFailures >",
            "failures > 5",
            "consecutiveFailures > 5 &&",
            "(consecutiveFailures > 5",
            "consecutiveFailures > 5)",
            "consecutiveFailures > true",
            "1 && 2",
            "consecutiveFailures $ 5",
            "1.2.3 > 1",
        ] {
            assert!(TripExpression::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
