//! Decisions the leader's integrations ask for about one object (a repair ticket that cannot be filed, an
//! action overdue): the object's history and the alert log record it. Ticket updates themselves are state
//! machine inputs (`Command::Object` with `Input::Ticket`, in `objects.rs`).

use state_machines::ObjectId;

use super::decide::{Decider, bounded_text, history};
use crate::model::CmdResult;
use crate::store::StoreError;

impl Decider<'_> {
    /// An alert about one object from the leader's integrations (tickets): history + alert log.
    pub(super) fn alert_object(&mut self, object: &ObjectId, message: &str) -> Result<CmdResult, StoreError> {
        let id = object.to_string();
        let Some(mut rec) = self.load(&id)? else {
            return Ok(self.refuse(proto::error::Code::NotFound, format!("no object {id}")));
        };
        let message = bounded_text(message);
        let rev = self.change(&mut rec, "alert", "", message.clone());
        self.push_history(&mut rec, history("alert", rev, self.now, "alert".into(), message.clone()));
        self.save(rec)?;
        self.audit_row("alert", "", &id, "master", &message)?;
        Ok(CmdResult { applied: 1, ..self.result() })
    }
}
