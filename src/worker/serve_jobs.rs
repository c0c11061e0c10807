//! The app's Serve toggle: starts [`crate::serve`] on the loaded language model with the
//! steering stack's text concepts, or stops it.

use crate::pipeline::completion::ConceptSet;

use super::State;
use super::job_error::JobError;
use super::protocol::{Event, ServeRequest, ServingInfo};

impl State {
    /// Starts the server for `req` (stopping a running one first), or only stops it.
    pub(super) fn serve(&mut self, req: Option<ServeRequest>) -> Result<(), JobError> {
        self.stop_server();
        let Some(req) = req else {
            return Ok(());
        };
        let m = self.model()?;
        let mut names: Vec<String> = Vec::with_capacity(req.concepts.len());
        for maps in &req.concepts {
            maps.check_fingerprint(&m.fingerprint)
                .map_err(|e| JobError::failed(format!("cannot serve `{}`: {e}", maps.meta().concept)))?;
            let name = maps.meta().concept.clone();
            if names.contains(&name) {
                return Err(JobError::failed(format!(
                    "two concepts in the stack are named `{name}`: a request could not tell them apart"
                )));
            }
            names.push(name);
        }
        let concepts = ConceptSet::from_checked(&m, req.concepts);
        let model = crate::serve::model_id(&m);
        let server = crate::serve::start(m, concepts, &req.options, false)
            .map_err(|e| JobError::failed(format!("the server did not start: {e}")))?;
        self.send(Event::Serving(Some(ServingInfo {
            url: format!("http://{}/v1", server.addr()),
            model,
            concepts: names,
        })));
        self.server = Some(server);
        Ok(())
    }

    /// Stops the server, if one runs (open requests finish in the background).
    pub(super) fn stop_server(&mut self) {
        if let Some(s) = self.server.take() {
            s.stop_in_background();
            self.send(Event::Serving(None));
        }
    }
}
