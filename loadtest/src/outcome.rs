//! What an answer means to a buyer: the outcome classes that results are reported by.

use serde::Serialize;

/// One class per way an order request can end. Reports keep a latency histogram per class,
/// because a fast 409 and a slow 201 are different experiences that an average would blur.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeClass {
    /// 201: stock taken, order journaled.
    Created,
    /// 200 with `Idempotent-Replayed`: a retry answered with the original result.
    Replayed,
    /// 409: `sold_out` or `purchase_limit`: a correct "no".
    Refused,
    /// 422: `idempotency_conflict` or `invalid`.
    Unprocessable,
    /// 429 or 503: shed by admission control, or the engine could not journal; nothing taken.
    Shed,
    /// Any other HTTP status (400, 404, 413, 500, ...).
    OtherError,
    /// No HTTP answer: connect refused, connection reset, or the request timed out.
    TransportError,
}

pub const CLASS_COUNT: usize = 7;

impl OutcomeClass {
    pub const ALL: [OutcomeClass; CLASS_COUNT] = [
        OutcomeClass::Created,
        OutcomeClass::Replayed,
        OutcomeClass::Refused,
        OutcomeClass::Unprocessable,
        OutcomeClass::Shed,
        OutcomeClass::OtherError,
        OutcomeClass::TransportError,
    ];

    pub fn index(self) -> usize {
        match self {
            OutcomeClass::Created => 0,
            OutcomeClass::Replayed => 1,
            OutcomeClass::Refused => 2,
            OutcomeClass::Unprocessable => 3,
            OutcomeClass::Shed => 4,
            OutcomeClass::OtherError => 5,
            OutcomeClass::TransportError => 6,
        }
    }

    /// The class of an HTTP status.
    pub fn of_status(status: u16) -> Self {
        match status {
            201 => OutcomeClass::Created,
            200 => OutcomeClass::Replayed,
            409 => OutcomeClass::Refused,
            422 => OutcomeClass::Unprocessable,
            429 | 503 => OutcomeClass::Shed,
            _ => OutcomeClass::OtherError,
        }
    }

    /// Short label for tables and charts.
    pub fn label(self) -> &'static str {
        match self {
            OutcomeClass::Created => "201 created",
            OutcomeClass::Replayed => "200 replay",
            OutcomeClass::Refused => "409 refused",
            OutcomeClass::Unprocessable => "422 unprocessable",
            OutcomeClass::Shed => "429/503 shed",
            OutcomeClass::OtherError => "other error",
            OutcomeClass::TransportError => "transport error",
        }
    }

    /// The key used in the JSON summary.
    pub fn key(self) -> &'static str {
        match self {
            OutcomeClass::Created => "created_201",
            OutcomeClass::Replayed => "replayed_200",
            OutcomeClass::Refused => "refused_409",
            OutcomeClass::Unprocessable => "unprocessable_422",
            OutcomeClass::Shed => "shed_429_503",
            OutcomeClass::OtherError => "other_error",
            OutcomeClass::TransportError => "transport_error",
        }
    }

    /// Colour in the HTML charts.
    pub fn color(self) -> &'static str {
        match self {
            OutcomeClass::Created => "#2e7d32",
            OutcomeClass::Replayed => "#1565c0",
            OutcomeClass::Refused => "#f9a825",
            OutcomeClass::Unprocessable => "#6a1b9a",
            OutcomeClass::Shed => "#ef6c00",
            OutcomeClass::OtherError => "#c62828",
            OutcomeClass::TransportError => "#424242",
        }
    }

    /// Counted against `--slo-error-rate`: the engine failed to give a business answer.
    /// 409 and 422 are correct answers to what was asked, so they are not errors.
    pub fn is_error(self) -> bool {
        matches!(
            self,
            OutcomeClass::Shed | OutcomeClass::OtherError | OutcomeClass::TransportError
        )
    }

    /// Whether the request got an HTTP answer (latency SLOs are over answered requests).
    pub fn is_answered(self) -> bool {
        self != OutcomeClass::TransportError
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_the_contracts_classes() {
        assert_eq!(OutcomeClass::of_status(201), OutcomeClass::Created);
        assert_eq!(OutcomeClass::of_status(200), OutcomeClass::Replayed);
        assert_eq!(OutcomeClass::of_status(409), OutcomeClass::Refused);
        assert_eq!(OutcomeClass::of_status(422), OutcomeClass::Unprocessable);
        assert_eq!(OutcomeClass::of_status(429), OutcomeClass::Shed);
        assert_eq!(OutcomeClass::of_status(503), OutcomeClass::Shed);
        assert_eq!(OutcomeClass::of_status(404), OutcomeClass::OtherError);
        assert_eq!(OutcomeClass::of_status(500), OutcomeClass::OtherError);
    }

    #[test]
    fn indexes_are_dense_and_in_order() {
        for (position, class) in OutcomeClass::ALL.iter().enumerate() {
            assert_eq!(class.index(), position);
        }
    }
}
