//! `table del|set|clear`.

use super::Operator;
use crate::control::command::TableOperation;

pub(super) fn apply(operator: &Operator, operation: TableOperation) -> Result<String, String> {
    let _ = (operator, operation);
    Err("table changes are not implemented yet".to_owned())
}
