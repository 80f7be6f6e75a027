//! `phigate portal list|show|revoke|extend|resend`, on the daemon side.

use super::{Control, Request, Response};
use crate::portal::{Entry, PortalError};
use crate::types::MessageId;
use serde::{Deserialize, Serialize};
use tracing::info;

/// One portal message as `portal list` and `show` print it: IDs, states, times and
/// counters. `show` adds the recipient (decrypted for the administrator).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PortalRow {
    pub id: MessageId,
    pub message: MessageId,
    pub rcpt_index: usize,
    pub state: String,
    pub reason: String,
    pub created: u64,
    pub expires_at: u64,
    pub ended_at: Option<u64>,
    pub picked_up: Option<u64>,
    pub notices: u32,
    pub views: u32,
    pub downloads: u32,
    pub replies: u32,
    pub attachments: usize,
    pub locked_until: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient: Option<String>,
}

impl From<&Entry> for PortalRow {
    fn from(e: &Entry) -> Self {
        PortalRow {
            id: e.id,
            message: e.msg,
            rcpt_index: e.rcpt_index,
            state: e.state.as_str().to_string(),
            reason: e.reason.clone(),
            created: e.created,
            expires_at: e.expires_at,
            ended_at: e.ended_at,
            picked_up: e.picked_up,
            notices: e.notices,
            views: e.views,
            downloads: e.downloads,
            replies: e.replies,
            attachments: e.attachments,
            locked_until: e.locked_until,
            recipient: None,
        }
    }
}

impl Control {
    pub(super) async fn portal(&self, req: Request, admin: &str) -> Response {
        let Some(portal) = self.portal.clone() else {
            return Response::err(format!(
                "{}: no [portal] section: the portal is off",
                self.cfg.source
            ));
        };
        let res: Result<Response, PortalError> = async {
            Ok(match req {
                Request::PortalList => {
                    let rows: Vec<PortalRow> = portal.list()?.iter().map(PortalRow::from).collect();
                    Response::ok(&rows)
                }
                Request::PortalShow { id } => {
                    let e = portal.get(&id)?;
                    let mut row = PortalRow::from(&e);
                    if let Ok(env) = self.services.spool.envelope(&e.id) {
                        row.recipient = env.recipients.first().map(|r| r.address.clone());
                    }
                    Response::ok(&row)
                }
                Request::PortalRevoke { id } => {
                    let e = portal.revoke(&id, admin).await?;
                    info!(admin, portal_id = %id, "portal message revoked");
                    Response::ok(&PortalRow::from(&e))
                }
                Request::PortalExtend { id, by } => {
                    let e = portal.extend(&id, by, admin).await?;
                    info!(admin, portal_id = %id, by, "portal link extended");
                    Response::ok(&PortalRow::from(&e))
                }
                Request::PortalResend { id } => {
                    let e = portal.resend(&id, admin).await?;
                    info!(admin, portal_id = %id, "portal notification resent");
                    Response::ok(&PortalRow::from(&e))
                }
                _ => Response::err("not a portal request".into()),
            })
        }
        .await;
        res.unwrap_or_else(|e| Response::err(e.to_string()))
    }
}
