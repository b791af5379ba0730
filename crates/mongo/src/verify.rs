//! Comparing the selected namespaces of a source with a target: the
//! documents comparison of `ferry_connect::verify::documents` over two
//! MongoDB deployments.

pub use ferry_connect::verify::documents::{
    DiffKind, Difference, NamespaceReport, VerifyReport, MAX_LISTED,
};

use crate::{MongoStore, Namespace};

/// Compares `namespaces` (as named on the source; the target uses the
/// same names) of `source` and `target`.
pub async fn compare(
    source: &MongoStore,
    target: &MongoStore,
    namespaces: &[Namespace],
) -> Result<VerifyReport, String> {
    let (s, t) = (
        crate::connector::documents_reader(source, true),
        crate::connector::documents_reader(target, false),
    );
    ferry_connect::verify::documents::compare(&s, &t, namespaces).await
}
