//! Keyset pagination for every list: `first` rows after a cursor, ordered by a unique key.
//! Cursors are encoded at the GraphQL edge (opaque there); here they are typed keys.

use sea_orm::{
    ColumnTrait, ConnectionTrait, DbErr, EntityTrait, Order, QueryFilter, QueryOrder, QuerySelect,
    Select, Value,
};

/// Rows per page when the client does not say.
pub const DEFAULT_PAGE_SIZE: u64 = 20;
/// Largest page a client may ask for.
pub const MAX_PAGE_SIZE: u64 = 100;

/// Which page to load.
#[derive(Debug, Clone)]
pub struct PageRequest<K> {
    /// How many rows (1..=[`MAX_PAGE_SIZE`]).
    pub first: u64,
    /// Load rows strictly after this key (in list order).
    pub after: Option<K>,
}

/// One page of rows.
#[derive(Debug, Clone)]
pub struct Page<T> {
    /// The rows, in list order.
    pub items: Vec<T>,
    /// More rows follow.
    pub has_next: bool,
    /// Rows precede (the request had a cursor).
    pub has_previous: bool,
}

/// List direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Oldest (smallest key) first.
    Ascending,
    /// Newest (largest key) first.
    Descending,
}

/// Loads one page of `select`, ordered by the unique `key` column.
pub async fn fetch<E, C, K>(
    db: &C,
    select: Select<E>,
    key: E::Column,
    direction: Direction,
    page: &PageRequest<K>,
) -> Result<Page<E::Model>, DbErr>
where
    E: EntityTrait,
    C: ConnectionTrait,
    K: Into<Value> + Clone,
{
    let mut select = select;
    if let Some(after) = &page.after {
        select = match direction {
            Direction::Ascending => select.filter(key.gt(after.clone())),
            Direction::Descending => select.filter(key.lt(after.clone())),
        };
    }
    let order = match direction {
        Direction::Ascending => Order::Asc,
        Direction::Descending => Order::Desc,
    };
    let mut items = select
        .order_by(key, order)
        .limit(page.first + 1)
        .all(db)
        .await?;
    let has_next = items.len() as u64 > page.first;
    items.truncate(page.first as usize);
    Ok(Page {
        items,
        has_next,
        has_previous: page.after.is_some(),
    })
}
