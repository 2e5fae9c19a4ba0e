//! The order domain, free of I/O: the status state machine, money in cents, and validation of a
//! new order. Both the HTTP API and the dispatcher go through these rules.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Where an order is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pending,
    Processing,
    Confirmed,
    Shipped,
    Delivered,
    Cancelled,
}

impl Status {
    pub const ALL: [Status; 6] = [
        Status::Pending,
        Status::Processing,
        Status::Confirmed,
        Status::Shipped,
        Status::Delivered,
        Status::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Processing => "processing",
            Status::Confirmed => "confirmed",
            Status::Shipped => "shipped",
            Status::Delivered => "delivered",
            Status::Cancelled => "cancelled",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Delivered | Status::Cancelled)
    }

    /// The lifecycle `pending → processing → confirmed → shipped → delivered`, plus cancellation
    /// from any non-terminal state. Staying in the same state is not a transition.
    pub fn can_become(self, to: Status) -> bool {
        use Status::*;
        matches!(
            (self, to),
            (Pending, Processing) | (Processing, Confirmed) | (Confirmed, Shipped) | (Shipped, Delivered)
        ) || (to == Cancelled && !self.is_terminal())
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown status name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown status {0:?}; expected one of pending, processing, confirmed, shipped, delivered, cancelled"
)]
pub struct UnknownStatus(pub String);

impl FromStr for Status {
    type Err = UnknownStatus;
    fn from_str(s: &str) -> Result<Status, UnknownStatus> {
        Status::ALL.into_iter().find(|st| st.as_str() == s).ok_or_else(|| UnknownStatus(s.to_string()))
    }
}

/// Renders integer cents as the decimal number MetalMart's clients expect (`2999` → `29.99`).
/// Exact for every amount below 2^53 cents; the database never stores a float.
pub fn cents_to_amount(cents: i64) -> f64 {
    cents as f64 / 100.0
}

/// Limits a new order must respect.
pub const MAX_LINES: usize = 50;
pub const MAX_QUANTITY: i64 = 100;
const MAX_TEXT: usize = 200;

/// A line as a client sends it. Only the product id and quantity are trusted; a client-sent
/// price or name is ignored in favour of the catalogue's.
#[derive(Debug, Clone)]
pub struct LineRequest {
    pub product_id: String,
    pub quantity: i64,
}

/// Why a new order was refused, phrased for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    pub field: String,
    pub message: String,
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> Invalid {
    Invalid { field: field.into(), message: message.into() }
}

/// Checks everything about a new order that needs no database: name, email, line count and
/// quantities. Product existence is checked against the catalogue inside the transaction.
pub fn validate_new_order(name: &str, email: &str, lines: &[LineRequest]) -> Result<(), Invalid> {
    if name.trim().is_empty() {
        return Err(invalid("customer_name", "must not be empty"));
    }
    if name.chars().count() > MAX_TEXT {
        return Err(invalid("customer_name", format!("must be at most {MAX_TEXT} characters")));
    }
    if !is_valid_email(email) {
        return Err(invalid("customer_email", format!("{email:?} is not a valid email address")));
    }
    if lines.is_empty() || lines.len() > MAX_LINES {
        return Err(invalid(
            "items",
            format!("must have between 1 and {MAX_LINES} lines, got {}", lines.len()),
        ));
    }
    for (i, line) in lines.iter().enumerate() {
        if line.product_id.trim().is_empty() {
            return Err(invalid(format!("items[{i}].product_id"), "must not be empty"));
        }
        if !(1..=MAX_QUANTITY).contains(&line.quantity) {
            return Err(invalid(
                format!("items[{i}].quantity"),
                format!("must be between 1 and {MAX_QUANTITY}, got {}", line.quantity),
            ));
        }
    }
    Ok(())
}

/// Checks a shipping address, given as `(field, value)` pairs named as the client sent them:
/// every field is optional free text, at most `MAX_TEXT` characters like the customer's name, so
/// that an order stays small wherever it is listed or sent.
pub fn validate_address(fields: &[(&str, &str)]) -> Result<(), Invalid> {
    match fields.iter().find(|(_, value)| value.chars().count() > MAX_TEXT) {
        Some((field, _)) => Err(invalid(*field, format!("must be at most {MAX_TEXT} characters"))),
        None => Ok(()),
    }
}

/// A deliberately plain address check: one `@`, a non-empty local part, a dotted domain of
/// letters, digits, `-` and `.`, no whitespace, at most 254 bytes. Deliverability is the mail
/// system's business; this catches typos and junk.
pub fn is_valid_email(email: &str) -> bool {
    if email.len() > 254 || email.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return false;
    }
    let Some((local, domain)) = email.split_once('@') else { return false };
    if local.is_empty() || local.len() > 64 || domain.contains('@') {
        return false;
    }
    let labels: Vec<&str> = domain.split('.').collect();
    labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle_moves_forward_one_step_at_a_time() {
        use Status::*;
        let allowed: Vec<(Status, Status)> = Status::ALL
            .into_iter()
            .flat_map(|a| Status::ALL.into_iter().map(move |b| (a, b)))
            .filter(|(a, b)| a.can_become(*b))
            .collect();
        assert_eq!(
            allowed,
            vec![
                (Pending, Processing),
                (Pending, Cancelled),
                (Processing, Confirmed),
                (Processing, Cancelled),
                (Confirmed, Shipped),
                (Confirmed, Cancelled),
                (Shipped, Delivered),
                (Shipped, Cancelled),
            ]
        );
    }

    #[test]
    fn status_names_round_trip() {
        for s in Status::ALL {
            assert_eq!(s.as_str().parse::<Status>(), Ok(s));
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
        }
        assert!("Shipped".parse::<Status>().is_err());
    }

    #[test]
    fn amounts_render_as_decimals() {
        assert_eq!(serde_json::to_string(&cents_to_amount(2999)).unwrap(), "29.99");
        assert_eq!(serde_json::to_string(&cents_to_amount(10)).unwrap(), "0.1");
        assert_eq!(serde_json::to_string(&cents_to_amount(123_456_789)).unwrap(), "1234567.89");
    }

    #[test]
    fn emails() {
        for ok in ["a@b.co", "dev+tag@metalbear.com", "x.y@sub.example.org"] {
            assert!(is_valid_email(ok), "{ok}");
        }
        for bad in ["", "a", "a@b", "@b.com", "a@@b.com", "a b@c.com", "a@b..com", "a@-b.com", "a@b.com\n"] {
            assert!(!is_valid_email(bad), "{bad:?}");
        }
    }

    #[test]
    fn address_fields_are_bounded() {
        let long = "é".repeat(MAX_TEXT + 1);
        let at_cap = "é".repeat(MAX_TEXT);
        assert!(validate_address(&[("street", ""), ("city", &at_cap)]).is_ok());
        let err = validate_address(&[("street", "1 Main St"), ("city", &long)]).unwrap_err();
        assert_eq!(err.field, "city");
    }

    #[test]
    fn new_order_limits() {
        let line = |q| LineRequest { product_id: "1".into(), quantity: q };
        assert!(validate_new_order("Ann", "ann@x.io", &[line(1)]).is_ok());
        assert_eq!(validate_new_order(" ", "ann@x.io", &[line(1)]).unwrap_err().field, "customer_name");
        assert_eq!(validate_new_order("Ann", "nope", &[line(1)]).unwrap_err().field, "customer_email");
        assert_eq!(validate_new_order("Ann", "ann@x.io", &[]).unwrap_err().field, "items");
        let many: Vec<_> = (0..51).map(|_| line(1)).collect();
        assert_eq!(validate_new_order("Ann", "ann@x.io", &many).unwrap_err().field, "items");
        assert_eq!(validate_new_order("Ann", "ann@x.io", &[line(0)]).unwrap_err().field, "items[0].quantity");
        assert_eq!(
            validate_new_order("Ann", "ann@x.io", &[line(1), line(101)]).unwrap_err().field,
            "items[1].quantity"
        );
    }
}
